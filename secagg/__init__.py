"""Secure aggregation (SecAgg+) with compression and differential privacy, transport-free.

Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving Machine Learning")
with the sparse neighbour graph of Bell et al. 2020 ("Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead"), stochastic-rounding quantisation and optional random rotation as
in Kairouz et al. 2021 (DDGauss). Client and server are explicit state machines over bytes; the
coordinator and the device carry the bytes (HTTP), `secagg.simulate` carries them in memory.

Modules: config, errors, crypto, shamir, graph, packing, encoding, wire, params, client,
server (+ server_state), dp, simulate.

One round (every arrow is one binary message, `secagg.wire`; the server closes each stage with
`server.advance` once everyone answered or a timeout passed, and whoever is silent has dropped):

  params = new_round(config, label, cohort, dim)        coordinator; sent to devices as JSON
  client.advertise_keys(c)            -> ADVERT          signed fresh X25519 keys + commitment
  server.advertise_keys(s, adverts)   -> ADVERT_SET      each client gets its neighbours' adverts
  client.share_keys(c, advert_set)    -> SHARES          AES-GCM Shamir shares for neighbours
  server.share_keys(s, shares)        -> ROUTED_SHARES   each client gets the shares for it
  client.masked_input(c, routed, encoding.encode(x, params.spec, rng, extra_ints, weight))
                                      -> MASKED_INPUT    packed at the field width
  server.masked_input_collection(s, inputs) -> CONSISTENCY_REQUEST   the survivor set
  client.consistency_check(c, request)      -> CONSISTENCY_SIGNATURE
  server.consistency_check(s, signatures)   -> UNMASK_REQUEST  self-mask shares of survivors,
                                                               key shares of dropouts
  client.unmasking(c, request)        -> UNMASK_SHARES
  server.unmasking(s, shares)         -> AggregateResult (field sum, float sum, counter sums,
                                         contributors); then dp.add_noise and dp.charge_round

Client and server states are immutable dataclasses with `to_json()` / `from_json()`.
"""

from secagg import (
    client,
    config,
    crypto,
    dp,
    encoding,
    errors,
    graph,
    packing,
    params,
    server,
    shamir,
    simulate,
    wire,
)
from secagg.config import DPConfig, SecAggConfig
from secagg.errors import (
    AbortError,
    BudgetExhaustedError,
    CryptoError,
    InputError,
    ProtocolError,
    SecAggError,
    WireError,
)
from secagg.params import RoundParams, make_round_id, new_round

__all__ = [
    "client",
    "config",
    "crypto",
    "dp",
    "encoding",
    "errors",
    "graph",
    "packing",
    "params",
    "server",
    "server_state",
    "shamir",
    "simulate",
    "wire",
    "DPConfig",
    "SecAggConfig",
    "RoundParams",
    "make_round_id",
    "new_round",
    "SecAggError",
    "ProtocolError",
    "AbortError",
    "WireError",
    "CryptoError",
    "InputError",
    "BudgetExhaustedError",
]
