"""Sotto's model side: data, vocabulary, the split language model, training and evaluation."""
