"""The domain, split by concept. Import models from here."""

from .audit import AuditEntry
from .flow_runs import ACTIVE_STATES, CLAIMABLE_STATES, TERMINAL_STATES, FlowRun, State
from .flows import Flow, FlowVersion
from .lifecycle import DeletionJob, DeletionState, DeletionTarget
from .history import RECOVERY_ACTORS, Actor, Log, LogLevel, StateChange
from .secrets import Secret, secret_values
from .schedules import (
    AmbiguousTimePolicy,
    NonexistentTimePolicy,
    Schedule,
    ScheduleKind,
    ScheduleStatus,
)
from .task_runs import TaskRun
from .usage import USAGE_SHARDS, TaskRunUsage
from .workers import Agent, AgentStatus, QueueHealth, WorkQueue
from .workspaces import PERSON_ROLE_CHOICES, Account, ApiKey, Membership, Role, Workspace, hash_api_key

__all__ = [
    "ACTIVE_STATES", "CLAIMABLE_STATES", "TERMINAL_STATES", "Account", "Actor", "Agent", "AgentStatus", "AuditEntry",
    "AmbiguousTimePolicy", "ApiKey", "DeletionJob", "DeletionState", "DeletionTarget", "Flow", "FlowRun", "FlowVersion", "Log", "LogLevel",
    "Membership", "NonexistentTimePolicy", "QueueHealth", "RECOVERY_ACTORS", "Role", "Schedule", "ScheduleKind",
    "ScheduleStatus", "Secret", "State", "StateChange", "TaskRun", "TaskRunUsage", "USAGE_SHARDS", "WorkQueue", "Workspace", "hash_api_key",
    "PERSON_ROLE_CHOICES", "secret_values",
]
