"""Countersign technicians' tools: flash, provision, inspect and replace keypads over serial."""
