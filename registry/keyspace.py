"""Every Redis key, hash field and channel name the registry uses, in one place.

Why one module: the layout is a storage format. A version prefix (`lg:v1:`) lets a new layout live
next to the old one during a migration, and tests can give each registry its own prefix.

Layout (a full load reads the six record hashes in one MULTI; a write publishes what it changed):

    <p>tenants      hash  <tenant>                      -> Tenant JSON
    <p>keys         hash  <key hmac>                    -> ApiKey JSON (never the key itself)
    <p>key_ids      hash  <tenant>:<key_id>             -> key hmac (for revocation by id)
    <p>adapters     hash  <tenant>:<name>:<version>     -> AdapterVersion JSON
    <p>prompts      hash  <tenant>:<name>:<version>     -> PromptVersion JSON
    <p>releases     hash  <tenant>:<release_id>         -> Release JSON
    <p>aliases      hash  <tenant>:<alias>              -> Alias JSON
    <p>principals   hash  <name>                        -> Principal JSON (token only as HMAC)
    <p>principal_tokens hash <token hmac>               -> principal name
    <p>key_labels   hash  <key hmac>                    -> KeyLabel JSON (name, prefix; listings)
    <p>key_seen     hash  <key hmac>                    -> last use, unix minute (throttled)
    <p>audit_head   string  hash of the newest audit entry (the chain, see write.lua)
    <p>seq          hash  adapter|prompt|release:...    -> last allocated version number
                        last_release:<tenant>          -> the tenant's newest release field
    <p>epoch        int   incremented by every write
    <p>audit        stream, every write; <p>audit:<tenant> the same, per tenant
    <p>retention_lease  string, PX: the gateway that sweeps this period (one of the fleet)
    <p>invalidate   pub/sub channel: each write's new epoch and changed records (write.lua)

Limits (`registry/limits.py`), per scope, a tenant id or `key:<tenant>:<key id>` (a key's own
limits, `key_scope`); `{...}` is a Redis Cluster hash tag keeping
a tenant's keys in one slot, so each Lua script touches one slot:

    <p>lim:{<scope>}:slots       zset   request id -> lease expiry (ms)
    <p>lim:{<scope>}:res         hash   request id -> "second|est tokens|est cost|spend key"
    <p>lim:{<scope>}:req         hash   second -> requests admitted in that second
    <p>lim:{<scope>}:tok         hash   second -> tokens (estimates until settled)
    <p>lim:{<scope>}:spend:<id>  hash   spent, reserved (period id: d20261121 or m202611)
    <p>lim:{<scope>}:settled     zset   request id -> settle time (ms), replay guard
    <p>lim:gateways              zset   process id -> heartbeat expiry (ms)

Fleet numbers (`registry/fleet.py`): per alias with a canary in progress, and per engine replica
and attribution period; a field per gateway process, each carrying its own lease:

    <p>fleet:canary:{<tenant>}:<alias>   hash  process id -> "<expiry ms>|<windows JSON>"
    <p>fleet:busy:{<replica>}:<period>   hash  process id -> "<tokens>|<busy intervals>"

Names are validated by `registry.models.is_name` (no `:`), so `:` is an unambiguous separator.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "lg:v1:"


@dataclass(frozen=True)
class Keyspace:
    prefix: str = DEFAULT_PREFIX

    @property
    def tenants(self) -> str:
        return f"{self.prefix}tenants"

    @property
    def keys(self) -> str:
        return f"{self.prefix}keys"

    @property
    def key_ids(self) -> str:
        return f"{self.prefix}key_ids"

    @property
    def adapters(self) -> str:
        return f"{self.prefix}adapters"

    @property
    def prompts(self) -> str:
        return f"{self.prefix}prompts"

    @property
    def releases(self) -> str:
        return f"{self.prefix}releases"

    @property
    def aliases(self) -> str:
        return f"{self.prefix}aliases"

    @property
    def principals(self) -> str:
        return f"{self.prefix}principals"

    @property
    def principal_tokens(self) -> str:
        return f"{self.prefix}principal_tokens"

    @property
    def key_labels(self) -> str:
        return f"{self.prefix}key_labels"

    @property
    def key_seen(self) -> str:
        return f"{self.prefix}key_seen"

    @property
    def audit_head(self) -> str:
        return f"{self.prefix}audit_head"

    @property
    def seq(self) -> str:
        return f"{self.prefix}seq"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}epoch"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit"

    def audit_of(self, tenant: str) -> str:
        return f"{self.prefix}audit:{tenant}"

    def channel(self, db: int) -> str:
        """The change channel of the registry in database `db`: Redis pub/sub ignores databases,
        so registries sharing a server in different databases must not share a channel (a
        gateway would apply another registry's changes)."""
        return f"{self.prefix}invalidate:{db}"

    @property
    def retention_lease(self) -> str:
        return f"{self.prefix}retention_lease"

    @property
    def snapshot_hashes(self) -> dict[str, str]:
        """Hash key -> the kind of record it holds, for the hashes a snapshot holds."""
        return {
            self.tenants: "tenants", self.keys: "keys", self.adapters: "adapters",
            self.prompts: "prompts", self.releases: "releases", self.aliases: "aliases",
        }  # fmt: skip

    def limits(self, scope: str) -> LimitKeys:
        return LimitKeys(self.prefix, scope)

    @property
    def limit_gateways(self) -> str:
        return f"{self.prefix}lim:gateways"

    def fleet_canary(self, tenant: str, alias: str) -> str:
        return f"{self.prefix}fleet:canary:{{{tenant}}}:{alias}"

    def fleet_busy(self, replica: str, period: int) -> str:
        return f"{self.prefix}fleet:busy:{{{replica}}}:{period}"

    def pattern(self) -> str:
        """SCAN pattern matching every key of this keyspace (tests dump it)."""
        return f"{self.prefix}*"


def key_scope(tenant: str, key_id: str) -> str:
    """The limits scope of one key's own limits (names have no `:`, so it never is a tenant's)."""
    return f"key:{tenant}:{key_id}"


def tenant_field(tenant: str, rest: str) -> str:
    """Hash field of a tenant-scoped record: `<tenant>:<rest>`."""
    return f"{tenant}:{rest}"


def version_field(tenant: str, name: str, version: int | str) -> str:
    return f"{tenant}:{name}:{version}"


def last_release_field(tenant: str) -> str:
    """`seq` field holding the tenant's newest release (the retention sweep's guard)."""
    return f"last_release:{tenant}"


def seq_field(kind: str, tenant: str, name: str) -> str:
    """Counter field for version numbers: kind is `adapter`, `prompt` or `release`."""
    return f"{kind}:{tenant}:{name}"


@dataclass(frozen=True, slots=True)
class LimitKeys:
    """Key names of one limits scope (see the layout above)."""

    prefix: str
    scope: str

    def _k(self, rest: str) -> str:
        return f"{self.prefix}lim:{{{self.scope}}}:{rest}"

    @property
    def slots(self) -> str:
        return self._k("slots")

    @property
    def reservations(self) -> str:
        return self._k("res")

    @property
    def requests(self) -> str:
        return self._k("req")

    @property
    def tokens(self) -> str:
        return self._k("tok")

    @property
    def settled(self) -> str:
        return self._k("settled")

    def spend(self, period_id: str) -> str:
        return self._k(f"spend:{period_id}")
