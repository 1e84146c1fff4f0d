"""StarRocks sink: Stream Load (pycurl) for data, the FE MySQL port for DDL."""

from dbmazz.retry import RetryPolicy
from dbmazz.sink.starrocks.settings import StarRocksSettings
from dbmazz.sink.starrocks.sink import StarRocksSink

__all__ = ["RetryPolicy", "StarRocksSettings", "StarRocksSink"]
