"""Thin KFP components, one per SICOG step (importable as sicog.components)."""
