"""The key scheme: hash tags, partitions, the partition of a key, derived keys."""

from __future__ import annotations

import pytest

from agentstream import App, Event
from agentstream.config import RedisSettings, SubscriptionSettings, load_settings
from agentstream.errors import ConfigError
from agentstream.transport.keys import (
    derived_key,
    hash_tag,
    partition_for,
    partition_streams,
    physical_subscriptions,
    same_slot,
    slot_of,
)
from agentstream.worker.partitions import fair_share


class TestHashTags:
    @pytest.mark.parametrize(
        ("key", "tag"),
        [("orders:{3}", "3"), ("{user1000}.following", "user1000"),
         ("foo{}{bar}", None), ("foo{{bar}}zap", "{bar"), ("plain", None)],
    )  # fmt: skip
    def test_as_redis_reads_them(self, key: str, tag: str | None) -> None:
        """The examples of the Redis Cluster specification."""
        assert hash_tag(key) == tag

    def test_slot_matches_redis(self) -> None:
        """CLUSTER KEYSLOT values (Redis Cluster specification, CRC16 / XMODEM)."""
        assert slot_of("123456789") == 0x31C3 % 16384
        assert slot_of("orders:{3}") == slot_of("3")


class TestDerivedKeys:
    def test_single_redis_keeps_the_old_names(self) -> None:
        assert derived_key("orders", "dlq", cluster=False) == "orders:dlq"

    def test_cluster_tags_a_plain_stream(self) -> None:
        key = derived_key("orders", "dlq", cluster=True)
        assert key == "{orders}:dlq"
        assert same_slot("orders", key)

    def test_partition_keys_share_the_partition_slot(self) -> None:
        for stream in partition_streams("orders", 8):
            for suffix in (
                "dlq",
                "lease:agents",
                "owner:agents:w-0",
                "lasterror:a:1-0",
            ):
                assert same_slot(stream, derived_key(stream, suffix, cluster=True))

    def test_braces_without_a_tag_are_refused_on_a_cluster(self) -> None:
        with pytest.raises(ConfigError, match="hash tag"):
            derived_key("a}b", "dlq", cluster=True)


class TestPartitions:
    def test_one_partition_is_the_plain_stream(self) -> None:
        assert partition_streams("orders", 1) == ["orders"]
        assert partition_streams("orders", 3) == [
            "orders:{0}",
            "orders:{1}",
            "orders:{2}",
        ]

    def test_partition_is_crc32_of_utf8_key(self) -> None:
        """The documented function: zlib CRC-32 (IEEE) of the UTF-8 bytes, mod P."""
        assert partition_for("hello", 1_000_000_000) == 907_060_870  # crc32("hello")
        assert partition_for("customer-17", 8) == 7  # the README's example
        # UTF-8 bytes, not Latin-1 (crc32(b"\xe9") % 7 == 1).
        assert partition_for("é", 7) == 4

    def test_no_key_spreads_evenly(self) -> None:
        picks = [partition_for(None, 4) for _ in range(400)]
        assert sorted(picks.count(p) for p in range(4)) == [100, 100, 100, 100]

    def test_physical_subscriptions_carry_their_dead_letter_streams(self) -> None:
        sub = SubscriptionSettings(stream="orders", partitions=2)
        subs = physical_subscriptions(sub, cluster=True)
        assert [(s.stream, s.dead_letter_key) for s in subs] == [
            ("orders:{0}", "orders:{0}:dlq"),
            ("orders:{1}", "orders:{1}:dlq"),
        ]
        named = SubscriptionSettings(
            stream="orders", partitions=2, dead_letter_stream="failed"
        )
        assert [
            s.dead_letter_key for s in physical_subscriptions(named, cluster=True)
        ] == [
            "failed:{0}",
            "failed:{1}",
        ]

    def test_a_dead_letter_stream_in_another_slot_is_refused(self) -> None:
        sub = SubscriptionSettings(stream="orders", dead_letter_stream="failed")
        assert physical_subscriptions(sub, cluster=False)[0].dead_letter_key == "failed"
        with pytest.raises(ConfigError, match="another cluster slot"):
            physical_subscriptions(sub, cluster=True)

    def test_handlers_of_the_stream_serve_its_partitions(self) -> None:
        app = App()

        @app.handler("paid", stream="orders")
        async def paid(event: Event) -> None: ...

        handler = app.resolve("orders:{5}", "paid")
        assert handler is not None and handler.func is paid
        assert app.resolve("other:{5}", "paid") is None

    @pytest.mark.parametrize(
        ("members", "shares"),
        [
            (["a"], [8]),
            (["a", "b", "c"], [3, 3, 2]),
            (list("abcdefghij"), [1] * 8 + [0, 0]),
        ],
    )
    def test_fair_share_covers_every_partition(
        self, members: list[str], shares: list[int]
    ) -> None:
        assert [fair_share(8, members, m) for m in members] == shares
        assert fair_share(8, members, "stranger") == 0


class TestTopologySettings:
    def test_seed_list_means_cluster(self) -> None:
        settings = RedisSettings(url="redis://u:p@a:7000,b:7001")
        assert settings.topology == "cluster"
        assert RedisSettings(url="redis://a:7000", cluster=True).topology == "cluster"

    def test_sentinel_url_and_table(self) -> None:
        assert (
            RedisSettings(url="redis+sentinel://s1:26379,s2:26379/mymaster").topology
            == "sentinel"
        )
        table = {"addresses": ["s1:26379"], "service_name": "mymaster"}
        assert RedisSettings(sentinel=table).topology == "sentinel"  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("toml", "message"),
        [
            ('url = "redis://a:7000,b"', "bad seed address"),
            ('url = "redis+sentinel://s1:26379"', "service_name"),
            ('url = "redis://a:1,b:2/3"', "database 0 only"),
            ('url = "unix:///tmp/r.sock"\ncluster = true', "TCP seed nodes"),
            ('cluster = true\n[redis.sentinel]\naddresses = ["s:1"]\nservice_name = "m"',
             "not both"),
            ('wait_replicas = -1', "greater than or equal to 0"),
        ],
    )  # fmt: skip
    def test_bad_topologies_are_clear_errors(
        self, tmp_path: pytest.TempPathFactory, toml: str, message: str
    ) -> None:
        path = tmp_path / "w.toml"  # type: ignore[operator]
        path.write_text(f"[redis]\n{toml}\n")
        with pytest.raises(ConfigError, match=message):
            load_settings(path, env={})
