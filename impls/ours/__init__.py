"""Our implementations of the attention spec: one module per framework, the same steps in each.

Each of ``attnsuite.impls.ours.{torch,tensorflow,jax}`` defines, in this order (heads
in the framework's layout: PyTorch (B, heads, L, d), TensorFlow and JAX (B, L, heads, d)):

- ``project(spec, params, x, letter)`` and ``visibility(spec, L_q, L_k, mask[, device])``:
  the projections into heads and the keys each query may see, from the framework's
  module in ``attnsuite.impls.ops`` (shared with the built-in adapters; see its contract);
- ``masked_softmax(logits, visible) -> probs``: softmax over the visible keys of each row
  (``visible`` None: all of them); a row with no visible key is zeros, with a zero
  (never NaN) gradient;
- ``dropout(probs, rate, seed) -> probs``: each weight zeroed with probability ``rate``,
  the rest scaled by 1 / (1 - rate); one seed gives one draw;
- ``explicit_attention(spec, q, k, v, mask=None, bias=None, dropout_rate=0.0, seed=None)``:
  the core written out: Q (B, H, L_q, d_k), K (B, H_kv, L_k, d_k), V (B, H_kv, L_k, d_v)
  in the framework's layout -> per-head outputs (B, H, L_q, d_v) likewise; query head h
  reads key/value head h // group_size;
- ``fused_attention(...)``: the same signature and result, on the framework's attention
  op; it falls back to ``explicit_attention`` for what that op cannot express (and says so);
- ``project_qkv(spec, params, query, key, value, start=0) -> (q, k, v)``: the three
  projections, Q and K rotated at their positions when the spec has RoPE
  (``ops.rope_qk``: keys at start + j, queries end-aligned); ``start`` is the number of
  tokens before these, a decoding step's cache length;
- ``attention_fn(spec, core)``: the SPEC 5 ``fn(params, query, key, value, mask=None,
  bias=None, training=False, seed=None)`` around a core: checks mask and bias,
  ``project_qkv``, runs the core (with ``spec.dropout`` when training), merges heads
  through ``wo``. The ``fn`` also decodes (SPEC 5, protocol in
  ``attnsuite.conformance.decode``): ``fn.init_cache(params, batch_size)`` and
  ``fn.decode(params, cache, query, key, value) -> (out, cache)`` on the same core; the
  cache is {"key", "value"}, the projected and rotated keys and values so far in the
  framework's head layout, a new one returned by each step (no mutation: JAX's
  ``decode`` is a pure function, jitted in ``fn.decode``); the new queries sit at the end
  of the keys so far, so each step runs the core with the causal rule bottom-right (the
  window counting from there). PyTorch and TensorFlow build it in ``decoding(spec,
  core)``, JAX in its module-level ``init_cache``/``decode``;
- ``explicit(spec)``, ``fused(spec)``: the factories in ``attnsuite.impls.registry``;
- ``kernel(spec)`` (PyTorch and JAX): ``fused_attention`` alone as ``fn(params, q, k, v)`` with ``fn.layout``
  ("BHLD" or "BLHD"), the "core.<framework>.fused" entry of ``attnsuite.impls.kernels``;
- the layer for use in a model: ``torch.MultiHeadAttention`` (an ``nn.Module``),
  ``tensorflow.MultiHeadAttention`` (a Keras layer), ``jax.init``/``jax.apply``.

Nothing outside ``ours`` (built-in adapters, the other kernels) imports from it, so a
change here changes our layers and our kernel entry, and nothing else.
"""
