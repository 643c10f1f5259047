"""Countersign."""
