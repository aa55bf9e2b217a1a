"""twistd plugin: ``twistd arvnode``.

Kept to one line of real code so ``twistd --help`` never imports arvnode;
everything lives in :mod:`arvnode.tap`.
"""
from twisted.application.service import ServiceMaker

arvnode = ServiceMaker(
    "arvnode", "arvnode.tap", "Arvados-compatible gateway node (keepproxy + controller)", "arvnode"
)
