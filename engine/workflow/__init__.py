"""The YAML language marketers write: spec, conditions, readers, loading, versions, changes.

May import: engine's low floors (errors, clock; models and db for stored versions).
Imported by every floor above.
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
