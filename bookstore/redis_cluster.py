"""django-redis on a Redis Cluster: every cache client of a process shares one RedisCluster client.

django-redis has no cluster client; its DefaultClient only needs a connection that answers the
commands it sends, so this factory hands it redis-py's RedisCluster (which follows MOVED/ASK and
the cluster's slot map) for the nodes in REDIS_CLUSTER_NODES. The resilience stores get the same
client through get_redis_connection("default"), as they do with REDIS_URL or Sentinel.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from django_redis.pool import ConnectionFactory
from redis.cluster import ClusterNode, RedisCluster

_clients: dict[tuple[Any, ...], tuple[int, RedisCluster]] = {}
_lock = threading.Lock()


class ClusterConnectionFactory(ConnectionFactory):
    """Return one RedisCluster per process and node list (a client per thread would multiply the connections)."""

    def connect(self, url: str) -> RedisCluster:
        params = self.make_connection_params(url)
        nodes = tuple(tuple(node) for node in self.options["CLUSTER_NODES"])
        key = (nodes, params.get("password"), params.get("socket_timeout"), params.get("socket_connect_timeout"))
        with _lock:
            found = _clients.get(key)
            if found is not None and found[0] == os.getpid():
                return found[1]
            client = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                password=params.get("password"),
                socket_timeout=params.get("socket_timeout"),
                socket_connect_timeout=params.get("socket_connect_timeout"),
                max_connections=self.options.get("CONNECTION_POOL_KWARGS", {}).get("max_connections", 64),
            )
            _clients[key] = (os.getpid(), client)  # a forked child builds its own: sockets are not shared
            return client

    def disconnect(self, connection: Any) -> None:
        connection.close()
