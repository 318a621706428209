"""Scheduling: task-level IR -> schedule-level IR, and the schedule validator."""
