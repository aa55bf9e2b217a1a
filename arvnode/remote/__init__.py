"""Talking to other clusters: the client (:mod:`.client`), the request relay
(:mod:`.forward`) and remote blocks (:mod:`.keep`). Remote-token validation
lives with the other token code in :mod:`arvnode.auth.remote_tokens`."""
