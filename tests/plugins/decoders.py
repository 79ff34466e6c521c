"""NumPy decoders for the ``decode`` check's own tests: the oracle's, and one per way a
cache goes wrong. Named as plug-ins: ``numpy:tests.plugins.decoders:dropped_cache``."""

from __future__ import annotations

import numpy as np

from attnsuite.impls import oracle


def _decoder(spec, *, keep=lambda cache, new: np.concatenate([cache, new], axis=1),
             decoding_spec=None, shared=None):
    fn = oracle.factory(spec)
    decoding = decoding_spec or spec.replace(causal="bottom_right")

    def init_cache(params, batch_size):
        if shared is not None:
            return shared
        return {"key": np.zeros((batch_size, 0, spec.E_k)), "value": np.zeros((batch_size, 0, spec.E_v))}

    def decode(params, cache, query, key, value):
        cache["key"], cache["value"] = keep(cache["key"], key), keep(cache["value"], value)
        return oracle.forward(decoding, params, query, cache["key"], cache["value"]), cache

    fn.init_cache, fn.decode = init_cache, decode
    return fn


def correct(spec):
    return _decoder(spec)


def dropped_cache(spec):
    """Each step attends to its own tokens only."""
    return _decoder(spec, keep=lambda cache, new: new)


def oldest_entry_dropped(spec):
    """A fixed-size cache that evicts its oldest entry once a step comes after the prefill."""
    return _decoder(spec, keep=lambda cache, new: np.concatenate([cache, new], axis=1)[:, 1:]
                    if cache.shape[1] else new)


def never_reset(spec):
    """One cache for every sequence: the second sequence sees the first one's keys."""
    return _decoder(spec, shared={"key": None, "value": None},
                    keep=lambda cache, new: new if cache is None else np.concatenate([cache, new], axis=1))


def window_ignored_while_decoding(spec):
    """The sliding window applied in a full pass but forgotten in the decoding path."""
    return _decoder(spec, decoding_spec=spec.replace(causal="bottom_right", window=None))
