"""The Cache contract, run against every backend adapter.

What the queue relies on from a cache, proven on App Engine's memcache stub,
one memcached through pymemcache, and two memcached servers through HashClient
— including how each fails: an error before a call is applied, and a reply
lost after it was (App Engine: an RPC error injected through the API proxy;
memcached: a TCP proxy that cuts the connection).
"""

import pickle
import time
from contextlib import closing

import pytest
from tests.support.seams import CacheWrapper
from tests.support.fault_proxy import FaultProxy
from tests.support.processes import wait_until

from clickqueue import CacheUnavailableError, CountingCache, InvalidArgumentError, wrap_client
from clickqueue.appengine_cache import FOREIGN_VALUE
from clickqueue.cache import ObservedCache

KEYS = [f"contract:{n}" for n in range(20)]


class ProxyFaults:
    """The memcached side of ``cache_faults``: the proxies of the servers holding
    ``keys`` fail their next call."""

    def __init__(self, proxies: list[FaultProxy], client) -> None:
        self.proxies = proxies
        self.client = client

    def fail_next(self, keys: list[str], *, after_applying: bool = False) -> None:
        servers = {self.client._get_client(key).server for key in keys} if len(self.proxies) > 1 else None
        for proxy in self.proxies:
            if servers is not None and proxy.address not in servers:
                continue
            if after_applying:
                proxy.lose_replies = 1
            else:
                proxy.forward_request_bytes = 0

    def answer_errors_next(self, keys: list[str], call: str) -> None:
        """The next ``call`` ("delete", "incr") of ``keys`` is answered with a server
        error line for each key, in place of the server's answer."""
        for proxy in self.proxies:
            on_proxy = [key for key in keys if len(self.proxies) == 1 or self.client._get_client(key).server == proxy.address]
            if on_proxy:
                proxy.answer_instead = b"SERVER_ERROR injected\r\n" * len(on_proxy)


class RpcFaults:
    """The App Engine side of ``cache_faults``."""

    def __init__(self, faults) -> None:
        self.faults = faults

    def fail_next(self, keys: list[str], *, after_applying: bool = False) -> None:
        self.faults.fail_next(after_applying=after_applying)

    def answer_errors_next(self, keys: list[str], call: str) -> None:
        self.faults.error_statuses_next = {"delete": "Delete", "incr": "BatchIncrement"}[call]


@pytest.fixture(params=["appengine", "memcached", "memcached-hash"])
def backend(request):
    """(cache, faults, raw client) for each backend; memcached is reached through fault proxies."""
    if request.param == "appengine":
        faults = request.getfixturevalue("memcache_rpc_faults")
        yield CountingCache(wrap_client(None)), RpcFaults(faults), None
        return
    from pymemcache.client.base import Client
    from pymemcache.client.hash import HashClient

    servers = [request.getfixturevalue("memcached_server")]
    if request.param == "memcached-hash":
        servers.append(request.getfixturevalue("second_memcached_server"))
    for server in servers:
        with closing(server.client()) as client:
            client.flush_all(noreply=False)
    proxies = [FaultProxy(server.address) for server in servers]
    options = {"connect_timeout": 5, "timeout": 5}
    if len(proxies) == 1:
        client = Client(proxies[0].address, **options)
    else:
        # A failed server is retried at once (not taken out of the ring), so a
        # test can look at what the failed call left behind.
        client = HashClient([proxy.address for proxy in proxies], retry_attempts=5, retry_timeout=0, **options)
    yield CountingCache(wrap_client(client)), ProxyFaults(proxies, client), client
    client.close()
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def cache(backend):
    return backend[0]


@pytest.fixture
def cache_faults(backend):
    return backend[1]


# -- what each call does ---------------------------------------------------------------


def test_get_multi_returns_only_present_keys(cache):
    cache.add_multi({"contract:a": b"1", "contract:b": b"2"})
    assert cache.get_multi(["contract:a", "contract:b", "contract:missing"]) == {
        "contract:a": b"1",
        "contract:b": b"2",
    }


def test_add_multi_stores_absent_keys_and_refuses_present_ones(cache):
    assert cache.add_multi({"contract:a": b"old"}) == {"contract:a": True}
    assert cache.add_multi({"contract:a": b"new", "contract:b": b"fresh"}) == {
        "contract:a": False,
        "contract:b": True,
    }
    assert cache.get_multi(["contract:a", "contract:b"]) == {"contract:a": b"old", "contract:b": b"fresh"}


def test_add_multi_of_many_keys_is_one_call(cache):
    assert cache.add_multi({key: key.encode() for key in KEYS}) == dict.fromkeys(KEYS, True)
    assert cache.calls["add_multi"] == 1
    assert cache.get_multi(KEYS) == {key: key.encode() for key in KEYS}


def test_add_multi_with_expiry_stores(cache):
    assert cache.add_multi({"contract:t": b"x"}, expire_seconds=60) == {"contract:t": True}
    assert cache.get_multi(["contract:t"]) == {"contract:t": b"x"}


def seconds_to_live(client, key: str) -> int | None:
    """What the backend itself holds as ``key``'s time to live (None: it never expires)."""
    if client is None:
        from google.appengine.api import memcache

        expires_at = memcache.Client().peek(key).get_expiration_time_sec()  # a Unix time
        return round(expires_at - time.time()) if expires_at else None
    node = client._get_client(key) if hasattr(client, "_get_client") else client
    ttl = int(node.raw_command(f"mg {key} t").split(b" t")[1])  # memcached: "HD t<seconds>", -1 for none
    return None if ttl == -1 else ttl


def test_values_written_without_an_expiry_never_expire(backend):
    _counting, _faults, client = backend
    cache = wrap_client(client)  # the adapter itself: a CountingCache passes its own default on
    cache.add_multi({"contract:a": b"1", "contract:b": b"1"})
    token = cache.gets_multi(["contract:b"])["contract:b"][1]
    assert cache.cas_multi({"contract:b": (b"2", token)}) == {"contract:b": True}
    assert (seconds_to_live(client, "contract:a"), seconds_to_live(client, "contract:b")) == (None, None)


def test_cas_multi_gives_each_key_the_expiry_named_for_it(backend):
    cache, _faults, client = backend
    cache.add_multi({"contract:a": b"1", "contract:b": b"1"})
    tokens = cache.gets_multi(["contract:a", "contract:b"])
    cache.clear()
    values = {key: (b"2", token) for key, (_value, token) in tokens.items()}
    assert cache.cas_multi(values, {"contract:b": 60}) == {"contract:a": True, "contract:b": True}
    assert seconds_to_live(client, "contract:a") is None
    assert 0 < seconds_to_live(client, "contract:b") <= 60
    assert (cache.calls, cache.round_trips) == ({"cas_multi": 1}, servers_holding(client, ["contract:a", "contract:b"]))


def test_binary_values_round_trip(cache):
    value = bytes(range(256)) + b"\r\nMN\r\nEND\r\n"
    assert cache.add_multi({"contract:bin": value}) == {"contract:bin": True}
    assert cache.get_multi(["contract:bin"]) == {"contract:bin": value}


def test_incr_on_a_missing_key_is_none(cache):
    assert cache.incr("contract:counter", 5) is None
    assert cache.get_multi(["contract:counter"]) == {}


def test_incr_adds_to_a_counter_and_returns_the_new_value(cache):
    cache.add_multi({"contract:counter": b"40"})
    assert cache.incr("contract:counter", 2) == 42
    assert cache.get_multi(["contract:counter"]) == {"contract:counter": b"42"}


def test_incr_on_a_value_that_is_not_a_number_is_none(cache):
    cache.add_multi({"contract:counter": b"not a number"})
    assert cache.incr("contract:counter", 1) is None
    assert cache.get_multi(["contract:counter"]) == {"contract:counter": b"not a number"}


def test_gets_multi_returns_present_keys_with_a_token(cache):
    cache.add_multi({"contract:a": b"1"})
    found = cache.gets_multi(["contract:a", "contract:missing"])
    assert list(found) == ["contract:a"]
    assert found["contract:a"][0] == b"1"


def test_cas_multi_stores_when_the_value_is_unchanged(cache):
    cache.add_multi({"contract:a": b"1"})
    _value, token = cache.gets_multi(["contract:a"])["contract:a"]
    assert cache.cas_multi({"contract:a": (b"2", token)}) == {"contract:a": True}
    assert cache.get_multi(["contract:a"]) == {"contract:a": b"2"}


def test_cas_multi_refuses_after_another_write(cache):
    cache.add_multi({"contract:a": b"1"})
    _value, token = cache.gets_multi(["contract:a"])["contract:a"]
    _value, other_token = cache.gets_multi(["contract:a"])["contract:a"]
    assert cache.cas_multi({"contract:a": (b"other", other_token)}) == {"contract:a": True}
    assert cache.cas_multi({"contract:a": (b"mine", token)}) == {"contract:a": False}
    assert cache.get_multi(["contract:a"]) == {"contract:a": b"other"}


def test_cas_multi_refuses_a_deleted_key(cache):
    cache.add_multi({"contract:a": b"1"})
    _value, token = cache.gets_multi(["contract:a"])["contract:a"]
    cache.delete_multi(["contract:a"])
    assert cache.cas_multi({"contract:a": (b"2", token)}) == {"contract:a": False}
    assert cache.get_multi(["contract:a"]) == {}


def test_cas_multi_answers_each_key_with_tokens_from_different_reads(cache):
    cache.add_multi({key: b"0" for key in KEYS})
    first = cache.gets_multi(KEYS[:10])
    second = cache.gets_multi(KEYS[10:])
    cache.add_multi({})  # nothing: no call needed, no error
    cache.cas_multi({KEYS[0]: (b"changed", first[KEYS[0]][1])})
    values = {key: (b"1", token) for key, (_value, token) in {**first, **second}.items()}
    applied = cache.cas_multi(values)
    assert applied == {**dict.fromkeys(KEYS, True), KEYS[0]: False}
    assert cache.get_multi(KEYS[:2]) == {KEYS[0]: b"changed", KEYS[1]: b"1"}


def servers_holding(client, keys: list[str]) -> int:
    """How many servers ``keys`` map to: every key is on the one server but with a HashClient."""
    return len({client._get_client(key).server for key in keys}) if hasattr(client, "_get_client") else 1


def test_a_call_is_one_round_trip_per_server_its_keys_map_to(backend):
    cache, _faults, client = backend
    cache.add_multi({key: b"0" for key in KEYS})
    cache.get_multi(KEYS)
    cache.gets_multi(KEYS[:1])
    assert servers_holding(client, KEYS) == (2 if hasattr(client, "_get_client") else 1)
    assert cache.round_trips == 2 * servers_holding(client, KEYS) + 1


def test_cas_multi_with_tokens_from_different_reads_is_one_round_trip_per_server(backend):
    cache, _faults, client = backend
    cache.add_multi({key: b"0" for key in KEYS})
    tokens = {**cache.gets_multi(KEYS[:10]), **cache.gets_multi(KEYS[10:])}
    cache.clear()
    assert cache.cas_multi({key: (b"1", token) for key, (_value, token) in tokens.items()}) == dict.fromkeys(KEYS, True)
    assert (cache.calls, cache.round_trips) == ({"cas_multi": 1}, servers_holding(client, KEYS))


def test_delete_multi_deletes_and_ignores_missing_keys(cache):
    cache.add_multi({"contract:a": b"1", "contract:b": b"2"})
    cache.delete_multi(["contract:a", "contract:missing", "contract:b"])
    assert cache.get_multi(["contract:a", "contract:b"]) == {}


def test_a_pickle_stored_by_the_backend_comes_back_as_bytes_and_never_runs(backend, tmp_path):
    cache, _faults, client = backend
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    if client is None:
        from google.appengine.api import memcache

        memcache.set("contract:pickle", Exploit())  # stored with App Engine's pickle flag
    else:
        client.set("contract:pickle", pickle.dumps(Exploit()), noreply=False)
    (value,) = cache.get_multi(["contract:pickle"]).values()
    assert isinstance(value, bytes)
    assert value[:1] == b"\x00" or value == pickle.dumps(Exploit())
    assert not marker.exists()


# -- how each call fails ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["get_multi", "gets_multi"])
def test_a_failed_read_raises(cache, cache_faults, method):
    cache.add_multi({"contract:a": b"1"})
    cache_faults.fail_next(["contract:a"])
    with pytest.raises(CacheUnavailableError) as raised:
        getattr(cache, method)(["contract:a"])
    assert (raised.value.key, raised.value.operation) == ("contract:a", {"get_multi": "get", "gets_multi": "gets"}[method])
    assert raised.value.__cause__ is not None, "the backend's own error, chained"
    assert cache.get_multi(["contract:a"]) == {"contract:a": b"1"}, "the next call works again"


def test_an_add_that_failed_before_it_was_applied_is_unknown_and_stored_nothing(cache, cache_faults):
    cache_faults.fail_next(["contract:a", "contract:b"])
    assert cache.add_multi({"contract:a": b"1", "contract:b": b"2"}) == {"contract:a": None, "contract:b": None}
    assert cache.get_multi(["contract:a", "contract:b"]) == {}


def test_an_add_whose_reply_was_lost_is_unknown_and_stored(cache, cache_faults):
    cache_faults.fail_next(["contract:a", "contract:b"], after_applying=True)
    assert cache.add_multi({"contract:a": b"1", "contract:b": b"2"}) == {"contract:a": None, "contract:b": None}
    assert cache.get_multi(["contract:a", "contract:b"]) == {"contract:a": b"1", "contract:b": b"2"}


def test_a_cas_whose_reply_was_lost_is_unknown_and_stored(cache, cache_faults):
    cache.add_multi({"contract:a": b"1"})
    token = cache.gets_multi(["contract:a"])["contract:a"][1]
    cache_faults.fail_next(["contract:a"], after_applying=True)
    assert cache.cas_multi({"contract:a": (b"2", token)}) == {"contract:a": None}
    assert cache.get_multi(["contract:a"]) == {"contract:a": b"2"}


def test_a_failed_incr_raises_even_when_it_was_applied(cache, cache_faults):
    cache.add_multi({"contract:counter": b"1"})
    cache_faults.fail_next(["contract:counter"], after_applying=True)
    with pytest.raises(CacheUnavailableError) as raised:
        cache.incr("contract:counter", 1)
    assert (raised.value.key, raised.value.operation) == ("contract:counter", "incr")
    assert cache.get_multi(["contract:counter"]) == {"contract:counter": b"2"}


def test_a_failed_delete_raises(cache, cache_faults):
    cache.add_multi({"contract:a": b"1"})
    cache_faults.fail_next(["contract:a"])
    with pytest.raises(CacheUnavailableError) as raised:
        cache.delete_multi(["contract:a"])
    assert (raised.value.key, raised.value.operation) == ("contract:a", "delete")
    assert cache.get_multi(["contract:a"]) == {"contract:a": b"1"}


def test_an_incr_answered_with_a_server_error_raises_naming_its_key(cache, cache_faults):
    cache.add_multi({"contract:counter": b"1"})
    cache_faults.answer_errors_next(["contract:counter"], "incr")
    with pytest.raises(CacheUnavailableError) as raised:
        cache.incr("contract:counter", 1)
    assert (raised.value.key, raised.value.operation) == ("contract:counter", "incr")


def test_a_delete_answered_with_a_server_error_raises_naming_its_key(cache, cache_faults):
    cache.add_multi({"contract:a": b"1"})
    cache_faults.answer_errors_next(["contract:a"], "delete")
    with pytest.raises(CacheUnavailableError) as raised:
        cache.delete_multi(["contract:a"])
    assert (raised.value.key, raised.value.operation) == ("contract:a", "delete")


# -- backend specifics -----------------------------------------------------------------


def test_memcached_server_error_mid_batch_fails_only_that_key(memcached_server, memcached_client):
    """memcached refuses a value over its item size with SERVER_ERROR; the keys
    around it must still get their own answers (pymemcache's own pipelined store
    raises at the error, after storing the keys before it)."""
    cache = wrap_client(memcached_client)
    values = {"contract:a": b"1", "contract:b": b"2", "contract:big": b"x" * 2_000_000, "contract:d": b"4"}
    assert cache.add_multi(values) == {"contract:a": True, "contract:b": True, "contract:big": None, "contract:d": True}
    assert cache.get_multi(list(values)) == {"contract:a": b"1", "contract:b": b"2", "contract:d": b"4"}


KEY_RULE = "use 1 to 250 printable ASCII characters without spaces"


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("contract:with space", id="space"),
        pytest.param("contract:x\r\nflush_all", id="a-command-after-a-line-end"),
        pytest.param("contract:" + "k" * 242, id="251-characters"),
        pytest.param("", id="empty"),
        pytest.param("contract:café", id="not-ascii"),
    ],
)
@pytest.mark.parametrize("call", ["get_multi", "add_multi", "delete_multi"])
def test_memcached_key_its_text_protocol_cannot_carry_is_refused_before_anything_is_sent(
    memcached_client, key, call
):
    cache = wrap_client(memcached_client)
    cache.add_multi({"contract:kept": b"1"})
    argument = {"contract:a": b"1", key: b"2"} if call == "add_multi" else ["contract:a", key]
    with pytest.raises(InvalidArgumentError) as refused:
        getattr(cache, call)(argument)
    assert (refused.value.value, str(refused.value).split(": ", 1)[1]) == (key, KEY_RULE)
    assert cache.get_multi(["contract:a", "contract:kept"]) == {"contract:kept": b"1"}


@pytest.mark.parametrize("good", ["k", "contract:" + "k" * 241], ids=["1-character", "250-characters"])
def test_memcached_key_refused_is_the_bad_one_after_a_key_of_a_limit_length(memcached_client, good):
    with pytest.raises(InvalidArgumentError) as refused:
        wrap_client(memcached_client).get_multi([good, "contract:with space"])
    assert refused.value.value == "contract:with space"


@pytest.mark.parametrize(("method", "operation"), [("get_multi", "get"), ("gets_multi", "gets")])
def test_memcached_read_answered_with_a_server_error_raises_naming_its_first_key(
    memcached_server, memcached_client, method, operation
):
    """(``memcached_client`` flushes the server first.)"""
    from pymemcache.client.base import Client

    proxy = FaultProxy(memcached_server.address)
    with closing(Client(proxy.address, timeout=5)) as client:
        cache = wrap_client(client)
        cache.add_multi({"contract:a": b"1", "contract:b": b"2"})
        proxy.answer_instead = b"SERVER_ERROR injected\r\n"
        with pytest.raises(CacheUnavailableError) as raised:
            getattr(cache, method)(["contract:a", "contract:b"])
        assert (raised.value.key, raised.value.operation) == ("contract:a", operation)
        assert cache.get_multi(["contract:a"]) == {"contract:a": b"1"}, "the next call works again"
    proxy.close()


def test_memcached_reply_is_read_whole_wherever_the_network_splits_it(memcached_server, memcached_client):
    """(``memcached_client`` flushes the server first.)"""
    from pymemcache.client.base import Client

    proxy = FaultProxy(memcached_server.address)
    with closing(Client(proxy.address, timeout=5)) as client:
        cache = wrap_client(client)
        cache.add_multi({"contract:a": b"0123456789"})
        reply = b"VA 10 kcontract:a\r\n0123456789\r\nMN\r\n"
        for split in range(1, len(reply)):
            proxy.split_answer_at = split
            assert cache.get_multi(["contract:a"]) == {"contract:a": b"0123456789"}, split
    proxy.close()


def test_memcached_connection_closed_mid_reply_fails_the_call_saying_so(memcached_server):
    from pymemcache.client.base import Client

    proxy = FaultProxy(memcached_server.address)
    with closing(Client(proxy.address, timeout=5)) as client:
        proxy.lose_replies = 1
        with pytest.raises(CacheUnavailableError) as raised:
            wrap_client(client).get_multi(["contract:a"])
        assert str(raised.value.__cause__) == "memcached closed the connection mid-reply"
    proxy.close()


@pytest.mark.parametrize("ignore_exc", [False, True], ids=["raising", "ignoring-errors"])
def test_hash_client_with_every_server_taken_out_raises_naming_the_key(memcached_server, ignore_exc):
    """A HashClient takes a server out of its ring at its first failure when it may not
    retry; with none left, a call fails: it must not pass for a miss."""
    from pymemcache.client.hash import HashClient

    proxy = FaultProxy(memcached_server.address)
    client = HashClient([proxy.address], retry_attempts=0, ignore_exc=ignore_exc, timeout=5)
    cache = wrap_client(client)
    proxy.forward_request_bytes = 0
    assert cache.add_multi({"contract:a": b"1"}) == {"contract:a": None}
    with pytest.raises(CacheUnavailableError) as raised:
        cache.get_multi(["contract:a"])
    assert (raised.value.key, raised.value.operation) == ("contract:a", "route")
    client.close()
    proxy.close()


def test_hash_client_server_waiting_for_its_retry_fails_the_call_instead_of_missing(memcached_server):
    """Between a failure and its retry a HashClient skips the server (its retry
    settings apply to clickqueue's calls too): the call fails, it does not read empty."""
    from pymemcache.client.hash import HashClient

    proxy = FaultProxy(memcached_server.address)
    client = HashClient([proxy.address], retry_attempts=2, retry_timeout=3600, timeout=5)
    cache = wrap_client(client)
    cache.add_multi({"contract:a": b"1"})
    proxy.forward_request_bytes = 0
    with pytest.raises(CacheUnavailableError):
        cache.get_multi(["contract:a"])
    with pytest.raises(CacheUnavailableError) as raised:
        cache.get_multi(["contract:a"])
    assert (raised.value.key, raised.value.operation, raised.value.__cause__) == ("contract:a", "get", None)
    client.close()
    proxy.close()


def test_memcached_key_of_one_character_is_taken(memcached_client):
    cache = wrap_client(memcached_client)
    assert cache.add_multi({"k": b"1"}) == {"k": True}
    assert cache.get_multi(["k"]) == {"k": b"1"}


def test_memcached_key_of_250_characters_is_taken(memcached_client):
    cache = wrap_client(memcached_client)
    key = "contract:" + "k" * 241
    assert cache.add_multi({key: b"1"}) == {key: True}
    assert cache.get_multi([key]) == {key: b"1"}


def test_memcached_part_of_a_batch_applied_before_the_connection_broke_is_unknown(memcached_server):
    from pymemcache.client.base import Client

    proxy = FaultProxy(memcached_server.address)
    with closing(memcached_server.client()) as direct, closing(Client(proxy.address, timeout=5)) as client:
        direct.flush_all(noreply=False)
        cache = wrap_client(client)
        values = {f"contract:{n}": b"v" * 100 for n in range(4)}
        first_two = sum(len(b"ms %s 100 T0 ME\r\n" % key.encode()) + 102 for key in list(values)[:2])
        proxy.forward_request_bytes = len(b"mg contract:0\r\n") + first_two
        assert cache.add_multi(values) == dict.fromkeys(values)
        # memcached serves each connection on its own thread: the cut connection's first two
        # commands may land after this other connection's first read.
        def applied():
            found = sorted(wrap_client(direct).get_multi(list(values)))
            return found if len(found) >= 2 else None

        assert wait_until(applied, timeout_seconds=10) == ["contract:0", "contract:1"]
    proxy.close()


def test_hash_client_keys_on_a_failing_server_are_unknown_and_the_rest_applied(
    memcached_server, second_memcached_server
):
    from pymemcache.client.hash import HashClient

    proxies = [FaultProxy(server.address) for server in (memcached_server, second_memcached_server)]
    client = HashClient([proxy.address for proxy in proxies], retry_attempts=0, timeout=5)
    client.flush_all(noreply=False)
    cache = wrap_client(client)
    on_failing = {key for key in KEYS if client._get_client(key).server == proxies[1].address}
    proxies[1].forward_request_bytes = 0
    applied = cache.add_multi({key: b"1" for key in KEYS})
    assert on_failing and on_failing != set(KEYS), "both servers hold some keys"
    assert applied == {key: (None if key in on_failing else True) for key in KEYS}
    client.close()
    for proxy in proxies:
        proxy.close()


def test_pymemcache_default_noreply_client_still_answers_per_key(memcached_client):
    assert memcached_client.default_noreply is True
    cache = wrap_client(memcached_client)
    assert cache.add_multi({"contract:a": b"1"}) == {"contract:a": True}
    assert cache.add_multi({"contract:a": b"2"}) == {"contract:a": False}


def test_pooled_pymemcache_client_is_wrapped(memcached_server, memcached_client):
    from pymemcache.client.base import PooledClient

    client = PooledClient(memcached_server.address)
    cache = wrap_client(client)
    assert cache.add_multi({"contract:a": b"1"}) == {"contract:a": True}
    assert cache.incr("contract:a", 1) == 2
    cache.delete_multi(["contract:a", "contract:b"])
    assert cache.get_multi(["contract:a"]) == {}
    client.close()


SERDE = "pass a pymemcache client without serde/serializer: clickqueue stores JSON bytes"


@pytest.mark.parametrize(
    ("option", "error"),
    [
        ("pickle_serde", SERDE),
        ("serializer", SERDE),
        ("key_prefix", "pass a pymemcache client without key_prefix: the queue prefixes its own keys"),
    ],
)
def test_pymemcache_client_that_would_change_values_or_keys_is_refused(memcached_server, option, error):
    from pymemcache import serde
    from pymemcache.client.base import Client

    options = {
        "pickle_serde": {"serde": serde.pickle_serde},
        "serializer": {"serializer": serde.python_memcache_serializer, "deserializer": serde.python_memcache_deserializer},
        "key_prefix": {"key_prefix": b"app:"},
    }[option]
    with pytest.raises(TypeError) as refused:
        wrap_client(Client(memcached_server.address, **options))
    assert str(refused.value) == error


def test_an_object_with_the_cache_methods_is_used_as_it_is(testbed):
    """Delegating through ``__getattr__``, as users' metrics or tracing wrappers do."""
    wrapper = CacheWrapper(wrap_client(None))
    assert wrap_client(wrapper) is wrapper
    assert wrapper.add_multi({"contract:a": b"1"}) == {"contract:a": True}


@pytest.mark.parametrize(
    ("client", "missing"),
    [(object(), "get_multi"), ("127.0.0.1:11211", "get_multi"), (11211, "get_multi"), (CacheWrapper(object()), "get_multi")],
)
def test_unsupported_client_is_refused_naming_what_it_lacks(client, missing):
    with pytest.raises(TypeError, match=f"unsupported cache client.*{missing}"):
        wrap_client(client)


def test_app_engine_cas_multi_with_tokens_of_two_reads_has_both_rpcs_in_flight_at_once(testbed):
    """One round trip: the RPC of the second read's keys is made before the first is waited on."""
    from google.appengine.api import apiproxy_stub_map

    events = []

    class Recording:
        def __init__(self, real) -> None:
            self.real = real

        def MakeSyncCall(self, service, call, request, response):  # runs when the RPC is waited on
            events.append(("ran", call))
            self.real.MakeSyncCall(service, call, request, response)

    def made(service, call, request, response, rpc) -> None:
        events.append(("made", call))
        rpc.stub = Recording(rpc.stub)

    cache = wrap_client(None)
    cache.add_multi({key: b"0" for key in KEYS})
    tokens = {**cache.gets_multi(KEYS[:10]), **cache.gets_multi(KEYS[10:])}
    hooks = apiproxy_stub_map.apiproxy.GetPreCallHooks()
    hooks.Append("clickqueue-test-in-flight", made, "memcache")
    try:
        applied = cache.cas_multi({key: (b"1", token) for key, (_value, token) in tokens.items()})
    finally:
        hooks.Clear()
    assert applied == dict.fromkeys(KEYS, True)
    assert events == [("made", "Set"), ("made", "Set"), ("ran", "Set"), ("ran", "Set")]


def test_app_engine_writes_over_one_call_go_out_in_parts_under_its_limit(memcache_rpc_faults):
    from clickqueue.appengine_cache import MAX_CALL_BYTES

    cache = wrap_client(None)
    values = {f"contract:big:{n}": bytes([n]) * 900_000 for n in range(40)}  # 36 MB
    memcache_rpc_faults.request_bytes.clear()
    assert cache.add_multi(values) == dict.fromkeys(values, True)
    sets = [size for method, size in memcache_rpc_faults.request_bytes if method == "Set"]
    assert len(sets) == 2 and max(sets) < MAX_CALL_BYTES + 100_000 < 32 * 2**20
    assert cache.get_multi(list(values)) == values


def test_app_engine_writes_of_exactly_twice_the_limit_go_out_in_two_full_calls(memcache_rpc_faults):
    from clickqueue.appengine_cache import MAX_CALL_BYTES

    cache = wrap_client(None)
    size = MAX_CALL_BYTES // 40
    values = {f"contract:big:{n}": bytes([n]) * size for n in range(80)}
    memcache_rpc_faults.request_bytes.clear()
    assert cache.add_multi(values) == dict.fromkeys(values, True)
    assert len([method for method, _size in memcache_rpc_faults.request_bytes if method == "Set"]) == 2


def test_app_engine_write_part_that_fails_leaves_only_its_own_keys_unknown(memcache_rpc_faults):
    from clickqueue.appengine_cache import MAX_CALL_BYTES

    cache = wrap_client(None)
    size = MAX_CALL_BYTES // 40
    values = {f"contract:big:{n}": bytes([n]) * size for n in range(60)}  # parts of 40 and 20
    memcache_rpc_faults.fail_next("Set")
    applied = cache.add_multi(values)
    assert applied == {key: None if n < 40 else True for n, key in enumerate(values)}
    assert len(cache.get_multi(list(values))) == 20


def test_app_engine_gets_made_again_in_halves_gives_tokens_that_compare_and_set(memcache_rpc_faults):
    cache = wrap_client(None)
    values = {f"contract:{n}": b"x" * 900 for n in range(5)}
    cache.add_multi(values)
    memcache_rpc_faults.max_response_bytes = 2000  # two values per answer at most
    found = cache.gets_multi(list(values))
    memcache_rpc_faults.max_response_bytes = None
    assert cache.cas_multi({key: (b"y", token) for key, (_value, token) in found.items()}) == dict.fromkeys(values, True)


def test_app_engine_read_refused_for_its_answer_size_is_made_again_in_halves(memcache_rpc_faults):
    cache = wrap_client(None)
    values = {f"contract:{n}": b"x" * 900 for n in range(5)}
    cache.add_multi(values)
    memcache_rpc_faults.max_response_bytes = 2000  # two values per answer at most
    assert cache.get_multi(list(values)) == values
    assert set(cache.gets_multi(list(values))) == set(values)


@pytest.mark.parametrize(
    ("stored", "read"),
    [(7, b"7"), ("text", b"text"), (True, FOREIGN_VALUE), (1.5, FOREIGN_VALUE)],
    ids=["an-int", "a-str", "a-bool", "a-float"],
)
def test_app_engine_values_another_client_stored_come_back_as_bytes(testbed, stored, read):
    """Another App Engine client's ``memcache.set`` stores ints and strs as such: they
    read as their bytes; anything else as one foreign value, never unpickled."""
    from google.appengine.api import memcache

    memcache.set("contract:other", stored)
    assert wrap_client(None).get_multi(["contract:other"]) == {"contract:other": read}


def test_app_engine_write_of_nothing_makes_no_rpc(memcache_rpc_faults):
    assert wrap_client(None).add_multi({}) == {}
    assert memcache_rpc_faults.request_bytes == []


@pytest.mark.parametrize(
    ("method", "argument"),
    [
        ("get_multi", ["contract:a", "contract:b"]),
        ("gets_multi", ["contract:a", "contract:b"]),
        ("add_multi", {"contract:a": b"1", "contract:b": b"2"}),
        ("incr", "contract:a"),
        ("delete_multi", ["contract:a", "contract:b"]),
    ],
)
def test_an_observed_cache_reports_each_call_with_its_first_key(testbed, method, argument):
    seen = []
    cache = ObservedCache(wrap_client(None), lambda name, key: seen.append((name, key)))
    getattr(cache, method)(*([argument, 1] if method == "incr" else [argument]))
    assert seen == [(method, "contract:a")]
