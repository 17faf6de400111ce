"""Backends: one module per backend type; registry maps type names to classes."""
