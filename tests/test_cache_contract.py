"""The Cache contract, run against every backend adapter.

What the queue relies on from a cache, proven on App Engine's memcache stub,
one memcached through pymemcache, and two memcached servers through HashClient.
"""

from contextlib import closing

import pytest

from clickqueue import wrap_client

KEYS = [f"contract:{n}" for n in range(20)]


def test_get_multi_returns_only_present_keys(cache):
    cache.add_multi({"contract:a": b"1", "contract:b": b"2"})
    assert cache.get_multi(["contract:a", "contract:b", "contract:missing"]) == {
        "contract:a": b"1",
        "contract:b": b"2",
    }


def test_add_multi_stores_absent_keys_and_returns_the_ones_present(cache):
    assert cache.add_multi({"contract:a": b"old"}) == []
    assert cache.add_multi({"contract:a": b"new", "contract:b": b"fresh"}) == ["contract:a"]
    assert cache.get_multi(["contract:a", "contract:b"]) == {"contract:a": b"old", "contract:b": b"fresh"}


def test_add_multi_of_many_keys_is_one_call(cache):
    assert cache.add_multi({key: key.encode() for key in KEYS}) == []
    assert cache.calls["add_multi"] == 1
    assert cache.get_multi(KEYS) == {key: key.encode() for key in KEYS}


def test_add_multi_with_expiry_stores(cache):
    assert cache.add_multi({"contract:t": b"x"}, expire_seconds=60) == []
    assert cache.get_multi(["contract:t"]) == {"contract:t": b"x"}


def test_incr_on_a_missing_key_is_none(cache):
    assert cache.incr("contract:counter", 5) is None
    assert cache.get_multi(["contract:counter"]) == {}


def test_incr_with_initial_value_creates_the_counter(cache):
    assert cache.incr("contract:counter", 5, initial_value=0) == 5
    assert cache.incr("contract:counter", 2, initial_value=0) == 7


def test_counters_read_back_as_decimal_bytes(cache):
    cache.incr("contract:counter", 42, initial_value=0)
    assert cache.get_multi(["contract:counter"]) == {"contract:counter": b"42"}
    value, _token = cache.gets_multi(["contract:counter"])["contract:counter"]
    assert value == b"42"


def test_cas_stores_when_the_value_is_unchanged(cache):
    cache.add_multi({"contract:a": b"1"})
    _value, token = cache.gets_multi(["contract:a"])["contract:a"]
    assert cache.cas("contract:a", b"2", token) is True
    assert cache.get_multi(["contract:a"]) == {"contract:a": b"2"}


def test_cas_fails_after_another_write(cache):
    cache.add_multi({"contract:a": b"1"})
    _value, token = cache.gets_multi(["contract:a"])["contract:a"]
    _value, other_token = cache.gets_multi(["contract:a"])["contract:a"]
    assert cache.cas("contract:a", b"other", other_token) is True
    assert cache.cas("contract:a", b"mine", token) is False
    assert cache.get_multi(["contract:a"]) == {"contract:a": b"other"}


def test_cas_on_a_deleted_key_is_false(cache):
    cache.add_multi({"contract:a": b"1"})
    _value, token = cache.gets_multi(["contract:a"])["contract:a"]
    cache.delete_multi(["contract:a"])
    assert cache.cas("contract:a", b"2", token) is False
    assert cache.get_multi(["contract:a"]) == {}


def test_delete_multi_returns_the_keys_that_were_missing(cache):
    cache.add_multi({"contract:a": b"1", "contract:b": b"2"})
    assert cache.delete_multi(["contract:a", "contract:missing", "contract:b"]) == ["contract:missing"]
    assert cache.delete_multi(["contract:a"]) == ["contract:a"]
    assert cache.get_multi(["contract:a", "contract:b"]) == {}


def test_gets_multi_returns_only_present_keys(cache):
    cache.add_multi({"contract:a": b"1"})
    assert set(cache.gets_multi(["contract:a", "contract:missing"])) == {"contract:a"}


@pytest.mark.parametrize("serde_option", ["pickle_serde", "serializer"])
def test_pymemcache_client_with_a_serde_is_refused(memcached_server, serde_option):
    from pymemcache import serde
    from pymemcache.client.base import Client

    options = (
        {"serde": serde.pickle_serde}
        if serde_option == "pickle_serde"
        else {"serializer": serde.python_memcache_serializer, "deserializer": serde.python_memcache_deserializer}
    )
    with pytest.raises(TypeError, match="without serde"):
        wrap_client(Client(memcached_server.address, **options))


def test_pymemcache_default_noreply_client_still_reports_failed_adds(memcached_client):
    assert memcached_client.default_noreply is True
    cache = wrap_client(memcached_client)
    assert cache.add_multi({"contract:a": b"1"}) == []
    assert cache.add_multi({"contract:a": b"2"}) == ["contract:a"]


def test_pooled_pymemcache_client_is_wrapped(memcached_server, memcached_client):
    from pymemcache.client.base import PooledClient

    with closing(PooledClient(memcached_server.address)) as client:
        cache = wrap_client(client)
        assert cache.add_multi({"contract:a": b"1"}) == []
        assert cache.delete_multi(["contract:a", "contract:b"]) == ["contract:b"]


@pytest.mark.parametrize("client", [object(), "127.0.0.1:11211", 11211])
def test_unsupported_client_is_refused(client):
    with pytest.raises(TypeError, match="unsupported cache client"):
        wrap_client(client)
