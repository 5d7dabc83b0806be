"""Shared package of batch_simulation_runner.py and batch_data_reducer.py.

Kept import-free: common/topas and common/errors ship alone to reducer nodes.
"""
