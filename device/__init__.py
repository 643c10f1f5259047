"""Countersign technicians\x27 tools: flash, provision, inspect and replace keypads over serial."""
