"""Projection workers: the log folded into usage history, cost, budgets and analytics views.

``novaquota projections run`` (see ``projections.cli``); pure folds in ``projections.folds``,
views in ``projections.views``, outputs in ``projections.emit``, the worker in
``projections.worker``. Design and API: docs/projections.md.
"""
