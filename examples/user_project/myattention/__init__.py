"""A user's attention layer (the attnsuite example project)."""

from myattention.layer import MultiHeadAttention, make

__all__ = ["MultiHeadAttention", "make"]
