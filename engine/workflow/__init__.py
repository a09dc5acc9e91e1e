"""The YAML language marketers write: spec, conditions, durations, readers, loading.

May import: engine's low floors (errors, clock). Imported by every floor above.
"""

from engine.workflow.loading import load_workflows
from engine.workflow.runtime import Runtime
from engine.workflow.sending_rules import load_policy
from engine.workflow.spec import Policy, SendPolicy, Sequence, Workflows

__all__ = [
    "Policy",
    "Runtime",
    "SendPolicy",
    "Sequence",
    "Workflows",
    "load_policy",
    "load_workflows",
]
