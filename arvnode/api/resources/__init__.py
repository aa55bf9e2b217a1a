"""One module per Arvados resource; :data:`RESOURCE_CLASSES` lists them for the router."""
from __future__ import annotations

from arvnode.api.resources.base import ObjectResource
from arvnode.api.resources.collections import Collections
from arvnode.api.resources.groups import Groups
from arvnode.api.resources.keep_services import KeepServices
from arvnode.api.resources.links import Links
from arvnode.api.resources.tokens import ApiClientAuthorizations
from arvnode.api.resources.users import Users
from arvnode.api.resources.workflows import Workflows

RESOURCE_CLASSES: tuple[type[ObjectResource], ...] = (
    Users, ApiClientAuthorizations, Collections, Groups, Links, KeepServices, Workflows,
)

__all__ = ["RESOURCE_CLASSES", "ObjectResource"]
