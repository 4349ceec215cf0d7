"""cluster: Redis time per admission, one Redis vs a 3-master cluster (docs/resilience.md; not in bench/run)."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from resilience.engine.limiter import Algorithm, LimitSpec
from resilience.stores.admission import RedisAdmission
from resilience.stores.cluster import ClusterAdmission
from resilience.stores.redis_breaker import RedisBreakerStore
from resilience.stores.redis_limiter import RedisLimiterStore
from tests.live import LocalRedisCluster, RedisServer

N, ALGORITHMS = 20_000, (Algorithm.SLIDING_WINDOW, Algorithm.TOKEN_BUCKET)


def run(kind: str, admitter: Any, client: Any, masters: list[Any], limits: int) -> None:
    admission = admitter(RedisLimiterStore(client, version_key="v"), RedisBreakerStore(client))
    specs = [[LimitSpec(f"rl:{{{p}.0:10.0.{ip // 250}.{ip % 250}}}", ALGORITHMS[p], 10**5, 60)
              for p in range(limits)] for ip in range(5000)]  # fmt: skip
    for m in masters:
        m.config_resetstat()
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda _: admission.admit(random.choice(specs), []), range(N)))
    wall = time.perf_counter() - started
    spent = [sum(s["usec"] for s in m.info("commandstats").values()) / N for m in masters]
    print(f"{kind:8} {limits} limit(s): Redis µs/admission {sum(spent):5.1f} in all, {max(spent):5.1f} on the busiest"
          f" master -> {1e6 / max(spent):7,.0f}/s; one client process drove {N / wall:,.0f}/s")  # fmt: skip


if __name__ == "__main__":
    with RedisServer() as one, LocalRedisCluster() as cluster:
        nodes = cluster.client()
        for limits in (1, 2):
            run("one node", RedisAdmission, one.client(), [one.client()], limits)
            run("cluster", ClusterAdmission, nodes, [*map(nodes.get_redis_connection, nodes.get_primaries())], limits)
