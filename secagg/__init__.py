"""Secure aggregation (SecAgg+) with compression and differential privacy, transport-free.

Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving Machine Learning")
with the sparse neighbour graph of Bell et al. 2020 ("Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead"), stochastic-rounding quantisation and optional random rotation as
in Kairouz et al. 2021 (DDGauss). Client and server are explicit state machines over bytes; the
coordinator and the device carry the bytes (HTTP), `secagg.simulate` carries them in memory.

Modules: config, errors, crypto, shamir, graph, packing, encoding, wire, params, client,
server, dp, simulate.
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
