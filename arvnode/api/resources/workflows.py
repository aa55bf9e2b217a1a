"""``/arvados/v1/workflows``: plain records (name, description, definition).

The federation issue fetches these across clusters; locally they are the
generic object resource with nothing special.
"""
from __future__ import annotations

from arvnode.api.resources.base import ObjectResource


class Workflows(ObjectResource):
    resource = "workflows"
    singular = "workflow"
