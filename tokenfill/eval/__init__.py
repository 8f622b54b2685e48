"""Evaluation: benchmark tasks, holes cut from held-out code, the sandbox, the report."""
