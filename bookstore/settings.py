"""Settings for bookstore, read from the environment.

With nothing set the app runs on a laptop with no services: SQLite in ./var and a local-memory
cache. Production-sensitive values default safe: DEBUG is off and SECRET_KEY is required unless
DEBUG is on. Set DATABASE_URL=postgres://... and REDIS_URL=redis://... for the real deployment.
"""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

from bookstore.env import env_bool, env_choice, env_float, env_int, env_list, env_str
from bookstore.logging import logging_config

# ModelAdmin[Book], ModelForm[Policy] and the like as base classes: the type checker's generics, at run time.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("BOOKSTORE_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY") or ""
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG-on"  # noqa: S105

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
# Other origins (https://other.example) whose forms may post here; the site's own origin always may.
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "bookstore.apps.BookstoreConfig",
    "accounts",
    "catalog",
    "orders",
    "resilience",
    # manage.py demo_data: demo accounts, books and (for --reset) orders. No models; nothing depends on it.
    "demo",
]

# Django's security.W003 looks for its CSRF middleware by name and cannot see the subclass below;
# bookstore/checks.py checks for any CSRF middleware instead.
SILENCED_SYSTEM_CHECKS = ["security.W003"]

MIDDLEWARE = [
    # First: every response, including the resilience layer's 429/503, carries X-Request-ID.
    "bookstore.request_id.RequestIdMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # Probes are answered here, ahead of anything that could refuse or stall them (bookstore/health.py).
    "bookstore.health.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # /api/books/ -> 308 /api/books, ahead of the resilience layer: the redirect costs no quota.
    "bookstore.slashes.TrailingSlashRedirectMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Outside sessions and CSRF, as Django's UpdateCacheMiddleware: it judges whether a response may
    # be kept for the stale fallback by the cookies and Vary those set (resilience/http/stale.py).
    "resilience.http.stale.StaleCopyMiddleware",
    # Inside it, so the stale copies are judged on what clients get: a `public` answer that sets a
    # cookie or answers credentials leaves as `private` (bookstore/cache_guard.py).
    "bookstore.cache_guard.SharedCacheGuardMiddleware",
    # Sessions, CSRF, the session's user and messages are skipped for API calls without a session
    # cookie, which use none of them (bookstore/lean.py); the admin and signed-in browsers get all four.
    "bookstore.lean.LeanSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "bookstore.lean.LeanCsrfViewMiddleware",
    "bookstore.lean.LeanAuthenticationMiddleware",
    # After authentication so staff exemption can read request.user lazily (no query unless a
    # staff-exempt policy matches); before CSRF, messages and every view.
    "resilience.http.middleware.ResilienceMiddleware",
    "bookstore.lean.LeanMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: it times the view alone and labels by view. Requests the resilience middleware refuses
    # never reach it; they are counted by PrometheusBeforeMiddleware and bookstore_ratelimit_*.
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "bookstore.urls"
WSGI_APPLICATION = "bookstore.wsgi.application"
ASGI_APPLICATION = "bookstore.asgi.application"
AUTH_USER_MODEL = "accounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL") or ""
if not DATABASE_URL:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASE_URL = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
# Milliseconds; 0 turns the timeout off.
DB_STATEMENT_TIMEOUT_MS = env_int("DB_STATEMENT_TIMEOUT_MS", 15000, minimum=0)
DB_TRANSACTION_POOLING = env_bool("DB_TRANSACTION_POOLING", False)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's psycopg 3 pool: a worker reuses connections instead of paying a TCP + auth
    # handshake per request. max_size bounds what one process can take from PostgreSQL.
    DATABASES["default"]["OPTIONS"] = {
        "pool": {
            "min_size": env_int("DB_POOL_MIN", 1, minimum=0),
            "max_size": env_int("DB_POOL_MAX", 8, minimum=1),
            "timeout": env_float("DB_POOL_TIMEOUT", 2.0),
            # How long the pool keeps retrying a lost connection in the background, backing off,
            # before it waits for a request to ask again (seconds). psycopg's default, 5 minutes,
            # would leave a pool retrying every 8 s, 16 s, ... minutes after PostgreSQL came back.
            "reconnect_timeout": env_float("DB_POOL_RECONNECT_TIMEOUT", 1.0, minimum=0.1),
        },
        # A host that accepts TCP but never answers must not stall a worker for long (seconds).
        "connect_timeout": env_int("DB_CONNECT_TIMEOUT", 3, minimum=1),
    }
    if DB_TRANSACTION_POOLING:
        # A pooler in transaction mode (PgBouncer) hands each transaction to any server connection:
        # it refuses startup options, and a cursor may not outlive its transaction. The statement
        # timeout is then set where every server connection gets it (the role, or the pooler's
        # connect_query); the backend checks the first connection of each process and logs a mismatch.
        DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
    else:
        # A runaway query must not hold row locks forever.
        DATABASES["default"]["OPTIONS"]["options"] = f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}"
# The same backends, instrumented by django-prometheus (queries, errors, connections); PostgreSQL's
# also takes every connection through the database circuit breaker (resilience/db/guard.py).
DATABASES["default"]["ENGINE"] = {
    "django.db.backends.postgresql": "resilience.db.postgresql",
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
}.get(DATABASES["default"]["ENGINE"], DATABASES["default"]["ENGINE"])
# A read replica of the same server's data (streaming replication): catalogue reads go there, except
# for a client that wrote within REPLICA_PIN_SECONDS and inside transactions (bookstore/routers.py).
DATABASE_REPLICA_URL = env_str("DATABASE_REPLICA_URL") or ""
REPLICA_PIN_SECONDS = env_float("REPLICA_PIN_SECONDS", 5.0, minimum=0.0)
if DATABASE_REPLICA_URL:
    _replica = dj_database_url.parse(DATABASE_REPLICA_URL, conn_max_age=0)
    on_postgresql = DATABASES["default"]["ENGINE"] == "resilience.db.postgresql"
    if _replica["ENGINE"] != "django.db.backends.postgresql" or not on_postgresql:
        raise ImproperlyConfigured("DATABASE_REPLICA_URL needs PostgreSQL for both DATABASE_URL and the replica")
    # The primary's engine, pool and timeouts; the replica's address.
    DATABASES["replica"] = replica = copy.deepcopy(DATABASES["default"])
    for field in ("NAME", "USER", "PASSWORD", "HOST", "PORT"):
        replica[field] = _replica[field]
    replica["TEST"] = {"MIRROR": "default"}
    DATABASE_ROUTERS = ["bookstore.routers.PrimaryReplicaRouter"]

if DATABASE_REPLICA_URL:
    _after = MIDDLEWARE.index("bookstore.request_id.RequestIdMiddleware") + 1
    MIDDLEWARE.insert(_after, "bookstore.routers.ReadYourWritesMiddleware")

# --- Cache / Redis --------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL") or ""
# Or, with Redis Sentinel: the sentinels' host:port list; the app asks them for the primary.
REDIS_SENTINELS = env_list("REDIS_SENTINELS", [])
REDIS_SENTINEL_SERVICE = env_str("REDIS_SENTINEL_SERVICE") or "mymaster"
REDIS_SENTINEL_DB = env_int("REDIS_SENTINEL_DB", 0, minimum=0)
REDIS_SENTINEL_PASSWORD = env_str("REDIS_SENTINEL_PASSWORD") or ""
# Or, with Redis Cluster: host:port of some of its nodes (the client learns the others from them).
REDIS_CLUSTER_NODES = env_list("REDIS_CLUSTER_NODES", [])
REDIS_PASSWORD = env_str("REDIS_PASSWORD") or ""
# Tight timeouts: a hung Redis must cost a request milliseconds, not minutes (seconds).
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 0.25)
REDIS_CONNECT_TIMEOUT = env_float("REDIS_CONNECT_TIMEOUT", 0.25)
if sum(map(bool, (REDIS_URL, REDIS_SENTINELS, REDIS_CLUSTER_NODES))) > 1:
    raise ImproperlyConfigured("set one of REDIS_URL, REDIS_SENTINELS and REDIS_CLUSTER_NODES")


def _sentinel_address(entry: str, setting: str = "REDIS_SENTINELS") -> tuple[str, int]:
    host, _, port = entry.rpartition(":")
    if not host or not port.isdigit():
        raise ImproperlyConfigured(f"{setting} entry {entry!r} is not host:port")
    return host.strip("[]"), int(port)


_redis_options: dict[str, object] = {
    "SOCKET_CONNECT_TIMEOUT": REDIS_CONNECT_TIMEOUT,
    "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT,
    "CONNECTION_POOL_KWARGS": {"max_connections": env_int("REDIS_MAX_CONNECTIONS", 64, minimum=1)},
}
if REDIS_PASSWORD:
    _redis_options["PASSWORD"] = REDIS_PASSWORD
if REDIS_SENTINELS:
    _redis_options.update(
        CLIENT_CLASS="django_redis.client.SentinelClient",
        CONNECTION_FACTORY="django_redis.pool.SentinelConnectionFactory",
        SENTINELS=[_sentinel_address(entry) for entry in REDIS_SENTINELS],
        # The sentinels are asked for the primary on every new connection: the same tight timeouts.
        SENTINEL_KWARGS={
            "socket_timeout": REDIS_SOCKET_TIMEOUT,
            "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
            **({"password": REDIS_SENTINEL_PASSWORD} if REDIS_SENTINEL_PASSWORD else {}),
        },
    )
    # One location, the primary, for reads too: a replica may lag behind what this process just
    # wrote, and during a failover it is the one being promoted (a string would add a replica pool).
    _redis_location: str | list[str] = [f"redis://{REDIS_SENTINEL_SERVICE}/{REDIS_SENTINEL_DB}"]
elif REDIS_CLUSTER_NODES:
    _redis_options.update(
        CLIENT_CLASS="django_redis.client.DefaultClient",
        CONNECTION_FACTORY="bookstore.redis_cluster.ClusterConnectionFactory",
        CLUSTER_NODES=[_sentinel_address(entry, "REDIS_CLUSTER_NODES") for entry in REDIS_CLUSTER_NODES],
    )
    # One location: the factory connects to the whole cluster from it (a list would add replicas).
    _redis_location = f"redis://{REDIS_CLUSTER_NODES[0]}/0"
else:
    _redis_options["CLIENT_CLASS"] = "django_redis.client.DefaultClient"
    _redis_location = REDIS_URL
if REDIS_URL or REDIS_SENTINELS or REDIS_CLUSTER_NODES:
    CACHES = {
        "default": {
            # django-redis's RedisCache with hit/miss/failure counters.
            "BACKEND": "django_prometheus.cache.backends.redis.RedisCache",
            "LOCATION": _redis_location,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "bookstore") or "",
            "OPTIONS": _redis_options,
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django_prometheus.cache.backends.locmem.LocMemCache"}}

# --- Auth ----------------------------------------------------------------------------------
# Argon2id first (memory-hard, and about a third of PBKDF2's CPU per check on our machines),
# run at a low CPU priority so that credential stuffing slows logins, not the shop
# (accounts/hashers.py). Hashes made by the others still verify, and are upgraded to Argon2 at
# the user's next successful login.
PASSWORD_HASHERS = [
    "accounts.hashers.LowPriorityArgon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
# API tokens (django-rest-knox): random, stored only as a SHA-512 digest, revoked on logout, on a
# password change and on suspension. A token lives TOKEN_TTL_HOURS from sign-in and use does not
# extend it: a leaked token is worth at most that long, and authenticating stays a read, not a write.
TOKEN_TTL_HOURS = env_float("TOKEN_TTL_HOURS", 10.0, minimum=0.01)
# Live tokens one account may hold (one per device or script); signing in once more revokes the oldest.
TOKEN_LIMIT_PER_USER = env_int("TOKEN_LIMIT_PER_USER", 10, minimum=1)
# A worker remembers a token it authenticated this long (seconds), so its later requests cost no
# query; every revocation reaches every worker at once over Redis (accounts/token_cache.py). 0: off.
TOKEN_CACHE_SECONDS = env_float("TOKEN_CACHE_SECONDS", 5.0, minimum=0.0)
if TOKEN_CACHE_SECONDS > 60:
    # A backstop for a revocation whose publish failed: it must stay short.
    raise ImproperlyConfigured(f"TOKEN_CACHE_SECONDS={TOKEN_CACHE_SECONDS} must be at most 60")
REST_KNOX = {
    "TOKEN_TTL": timedelta(hours=TOKEN_TTL_HOURS),
    "AUTO_REFRESH": False,
    "AUTH_HEADER_PREFIX": "Token",
    # knox's own cap answers 403 at the limit; accounts.services.token_create evicts the oldest instead.
    "TOKEN_LIMIT_PER_USER": None,
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- I18N / static --------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# Oversize bodies are refused (413) before a parser sees them (bytes).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 256 * 1024, minimum=1024)

# --- Security (safe unless told otherwise) --------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Number of reverse proxies in front of the app whose entries in TRUSTED_PROXY_HEADER are trusted.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0)
# The header those proxies append the client to: X-Forwarded-For or RFC 7239 Forwarded. Only this
# one is read: a client could send the other itself (resilience/http/clientip.py).
TRUSTED_PROXY_HEADER = env_choice("TRUSTED_PROXY_HEADER", "x-forwarded-for", ("x-forwarded-for", "forwarded"))
# RFC 7239 obfuscated identifiers (for=_abc) may be new on every request: by default they count
# against the proxy that sent them; per-client when the proxies keep one identifier per client.
TRUSTED_PROXY_OBFUSCATED_IDS = env_choice("TRUSTED_PROXY_OBFUSCATED_IDS", "per-request", ("per-request", "per-client"))

# HTTPS=true: browsers reach the site over HTTPS only (TLS ends at the reverse proxy). It is the
# default of each setting below; each can still be set on its own. Off with DEBUG, whose runserver
# speaks plain HTTP (secure cookies would never come back to it).
HTTPS = env_bool("HTTPS", False) and not DEBUG
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", HTTPS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", HTTPS)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", HTTPS)
# Probes are answered ahead of SecurityMiddleware; Prometheus scrapes the app itself, not the proxy.
SECURE_REDIRECT_EXEMPT = [r"^metrics$"]
# The request header that carries the client's scheme, set (never passed through) by the proxy:
# without it, Django sees every request behind a TLS-terminating proxy as plain HTTP, so a form's
# https Origin does not match and the admin login fails CSRF. Believed only when a proxy is trusted
# (a client talking to the app directly could claim https); SECURE_PROXY_SSL_HEADER= turns it off.
_proxy_ssl_header = (
    env_str("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto" if TRUSTED_PROXY_COUNT else "") or ""
).strip()
if _proxy_ssl_header and not re.fullmatch(r"[A-Za-z0-9-]+", _proxy_ssl_header):
    raise ImproperlyConfigured(f"SECURE_PROXY_SSL_HEADER={_proxy_ssl_header!r} is not a header name")
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_ssl_header.upper().replace("-", "_"), "https") if _proxy_ssl_header else None
)
# HSTS cannot be taken back for its duration (browsers refuse plain HTTP until it runs out), so it
# is never on by default: production sets a year once HTTPS works everywhere (seconds).
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)

# --- Resilience -----------------------------------------------------------------------------
# Prefix of every Redis key the limiter and breakers write (one Redis can serve several apps).
RESILIENCE_KEY_PREFIX = env_str("RESILIENCE_KEY_PREFIX", "bookstore:") or ""
if "{" in RESILIENCE_KEY_PREFIX or "}" in RESILIENCE_KEY_PREFIX:
    # A brace would become every key's hash tag: one cluster slot for the whole layer (stores/keys.py).
    raise ImproperlyConfigured("RESILIENCE_KEY_PREFIX holds no braces")
# After a Redis error, stay on the in-process fallback this long before trying Redis again (s).
RESILIENCE_STORE_RETRY_SECONDS = env_float("RESILIENCE_STORE_RETRY_SECONDS", 1.0)
# While Redis is unreachable each worker enforces its share of a limit: the limit divided by the
# fleet's live workers, as last counted from their reports in Redis, and never by fewer than this
# many (this instance's workers by default): a worker that started during the outage, or reported
# first at start-up, has counted no others.
RESILIENCE_FALLBACK_WORKERS = env_int("RESILIENCE_FALLBACK_WORKERS", env_int("GUNICORN_WORKERS", 1), minimum=1)
# /metrics answers these networks, or a request with "Authorization: Bearer <METRICS_BEARER_TOKEN>".
METRICS_ALLOWED_NETWORKS = env_list("METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128"])
METRICS_BEARER_TOKEN = env_str("METRICS_BEARER_TOKEN", "") or ""
# Staff may inject failures into named dependencies (drills, tests). Never on by default.
FAULT_INJECTION = env_bool("FAULT_INJECTION", False)
# IPv6 clients are counted by network: one /64 is usually one subscriber.
RATELIMIT_IPV6_PREFIX = env_int("RATELIMIT_IPV6_PREFIX", 64, minimum=1)

# --- Catalogue ----------------------------------------------------------------------------
# Bytes of rendered anonymous book pages a process keeps for the current catalogue version
# (catalog/http.py); 0 renders every page.
CATALOGUE_PAGE_CACHE_BYTES = env_int("CATALOGUE_PAGE_CACHE_BYTES", 8 * 1024 * 1024, minimum=0)

# --- REST framework / OpenAPI ---------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "bookstore.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_SCHEMA_CLASS": "bookstore.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "bookstore.exceptions.problem_exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": [
        "bookstore.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Bookstore API",
    "DESCRIPTION": (
        "Books, accounts and orders. Every error is application/problem+json (RFC 9457); "
        "rate-limited answers are 429 with Retry-After and RateLimit headers."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Assets come from drf-spectacular-sidecar through whitenoise: nothing from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"validatorUrl": None, "deepLinking": True},
    "REDOC_UI_SETTINGS": {"hideDownloadButton": False},
    "COMPONENT_SPLIT_REQUEST": True,
    "PREPROCESSING_HOOKS": ["bookstore.openapi.exclude_staff_operations"],
    # Every error is problem+json: document it on each operation so clients and checks see it.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "bookstore.openapi.add_problem_responses",
        "bookstore.openapi.add_resilience_headers",
    ],
    "ENUM_NAME_OVERRIDES": {
        "OrderStatusEnum": "orders.models.Order.Status",
        "UserRoleEnum": "accounts.models.User.Role",
        "UserStatusEnum": "accounts.models.User.Status",
    },
}

# Problem types are URIs under this base (RFC 9457 section 3.1.1).
PROBLEM_TYPE_BASE = env_str("PROBLEM_TYPE_BASE", "https://bookstore.example/problems/")

# json: one JSON object per line with the request id and every extra field (for log shippers);
# plain: one readable line. Servers log to stdout; manage.py makes it stderr, so that a command's
# stdout holds only what the command prints.
LOG_FORMAT = (env_str("LOG_FORMAT") or ("plain" if DEBUG else "json")).strip().lower()
if LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} is not json or plain")
LOG_STREAM = env_choice("LOG_STREAM", "stdout", ("stdout", "stderr"))
LOGGING = logging_config(fmt=LOG_FORMAT, level=env_str("LOG_LEVEL", "INFO") or "INFO", stream=LOG_STREAM)
