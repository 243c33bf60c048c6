"""Bridges to other atomistic ML codes (their models in, pygfm models out)."""
