"""Geant4 data sets for TOPAS tasks: found and keyed by content on this machine (data.py),
uploaded once into a container shared across campaigns (upload.py), fetched, verified and
made read-only on each node before its first task (stage.py, which ships to nodes alone)."""
