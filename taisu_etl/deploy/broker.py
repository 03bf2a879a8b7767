"""The production mode's Redis broker and its Celery workers, seen from outside.

`redis` and `celery` come with the project's `airflow` extra (`apache-airflow[celery]`); they
are imported here only when the production mode asks.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from taisu_etl.errors import TaisuError


def check_redis(url: str, *, timeout: float = 5.0) -> None:
    """Raise a one-line TaisuError unless Redis answers PING at `url`."""
    try:
        import redis
    except ImportError:
        raise TaisuError("the production mode needs the `redis` and `celery` packages: install the project's "
                         "airflow extra (make install)") from None
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise TaisuError(f"Redis does not answer at {url} ({exc}); start it (redis-server) or choose another "
                         "with TAISU_AIRFLOW_REDIS_URL") from None
    finally:
        client.close()


def ping_workers(broker_url: str, transport_options: Mapping[str, str], names: Sequence[str], *,
                 timeout: float = 2.0) -> set[str]:
    """The names among `names` of the Celery workers that answer a ping through the broker now."""
    from celery import Celery

    options: dict[str, object] = dict(transport_options)
    if "visibility_timeout" in options:
        options["visibility_timeout"] = int(str(options["visibility_timeout"]))
    app = Celery("taisu-deploy-ping", broker=broker_url, set_as_current=False)
    app.conf.broker_transport_options = options
    app.conf.broker_connection_retry_on_startup = False
    try:
        replies = app.control.ping(destination=list(names), timeout=timeout)
    except Exception:  # a broker that cannot be reached means no worker answered; the caller says so
        return set()
    finally:
        app.close()
    return {name for reply in replies for name in reply if name in names}
