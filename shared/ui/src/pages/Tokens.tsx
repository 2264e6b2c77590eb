// Token management (admin tokens only): list, create (role, namespaces, lifetime; the secret
// is shown once), revoke (with every token minted from it). GET/POST /v1/tokens, DELETE
// /v1/tokens/{id}.
import { useState, type FormEvent } from "react";
import { listAll, request } from "../api";
import { ErrorBox, Loading, Section, Time } from "../components";
import { useConnection } from "../connection";
import { useLoad } from "../hooks";

interface TokenView {
  id: string;
  name: string;
  role: "read" | "write" | "admin";
  namespaces: string[];
  tools: string[] | null;
  createdBy: string | null;
  createdAt: string;
  expiresAt: string | null;
  revokedAt: string | null;
}

const LIFETIMES: [string, number | null][] = [
  ["no expiry (or the parent token's)", null],
  ["1 hour", 3600],
  ["1 day", 86400],
  ["7 days", 7 * 86400],
  ["30 days", 30 * 86400],
  ["90 days", 90 * 86400],
];

function stateOf(t: TokenView): string {
  if (t.revokedAt) return "revoked";
  if (t.expiresAt && new Date(t.expiresAt).getTime() <= Date.now()) return "expired";
  return "active";
}

export function TokensPage() {
  const { who } = useConnection();
  const loaded = useLoad("tokens", (gw, signal) => listAll<TokenView>(gw, "/v1/tokens", signal));
  if (who && who.role !== "admin")
    return (
      <div>
        <h1>Tokens</h1>
        <p>Token management needs an admin token; this one is {who.role}.</p>
      </div>
    );
  const tokens = loaded.data ?? [];
  return (
    <div>
      <h1>Tokens</h1>
      <p className="muted">
        Secrets are shown once, when a token is created, and stored only as hashes. Revoking a token revokes every token minted from
        it.
      </p>
      <CreateToken onCreated={loaded.reload} />
      <Section title="All tokens">
        <ErrorBox error={loaded.error} />
        {loaded.loading && !loaded.data ? <Loading what="tokens" /> : null}
        {tokens.length > 0 ? (
          <div className="table-wrap">
            <table aria-label="Tokens">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Id</th>
                  <th scope="col">Role</th>
                  <th scope="col">Namespaces</th>
                  <th scope="col">Created</th>
                  <th scope="col">Expires</th>
                  <th scope="col">State</th>
                  <th scope="col">Actions</th>
                </tr>
              </thead>
              <tbody>
                {tokens.map((t) => (
                  <TokenRow key={t.id} token={t} own={t.id === who?.tokenId} onRevoked={loaded.reload} />
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
      </Section>
    </div>
  );
}

function TokenRow({ token, own, onRevoked }: { token: TokenView; own: boolean; onRevoked: () => void }) {
  const { gateway } = useConnection();
  const [confirming, setConfirming] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const state = stateOf(token);
  async function revoke() {
    if (!gateway) return;
    try {
      await request(gateway, "DELETE", `/v1/tokens/${encodeURIComponent(token.id)}`);
      setConfirming(false);
      onRevoked();
    } catch (e) {
      setError(e as Error);
    }
  }
  return (
    <tr data-state={state}>
      <th scope="row">
        {token.name}
        {own ? <span className="muted"> (this token)</span> : null}
      </th>
      <td>
        <code>{token.id}</code>
      </td>
      <td>
        <span className={`badge role-${token.role}`}>{token.role}</span>
        {token.tools ? <span className="muted"> talon-ops: {token.tools.join(", ")}</span> : null}
      </td>
      <td>{token.namespaces.join(", ")}</td>
      <td>
        <Time iso={token.createdAt} />
        {token.createdBy ? <span className="muted"> by {token.createdBy}</span> : null}
      </td>
      <td>{token.expiresAt ? <Time iso={token.expiresAt} /> : <span className="muted">never</span>}</td>
      <td>{state}</td>
      <td>
        {state === "revoked" ? null : confirming ? (
          <span className="row" role="group" aria-label={`Confirm revoking ${token.name}`}>
            <span>
              Revoke {token.name}
              {own ? " (the token this page uses)" : ""} and every token minted from it?
            </span>
            <button type="button" className="danger" onClick={revoke}>
              Confirm revoke
            </button>
            {/* Focus lands on the safe choice: Enter does not revoke by accident. */}
            <button type="button" className="small" onClick={() => setConfirming(false)} autoFocus>
              Keep
            </button>
          </span>
        ) : (
          <button type="button" className="small" aria-label={`Revoke ${token.name}`} onClick={() => setConfirming(true)}>
            Revoke
          </button>
        )}
        <ErrorBox error={error} />
      </td>
    </tr>
  );
}

function CreateToken({ onCreated }: { onCreated: () => void }) {
  const { gateway, who, namespaces } = useConnection();
  const [name, setName] = useState("");
  const [role, setRole] = useState("read");
  const [allNamespaces, setAllNamespaces] = useState(false);
  const [chosen, setChosen] = useState<string[]>([]);
  const [lifetime, setLifetime] = useState("");
  const [secret, setSecret] = useState<{ name: string; token: string } | null>(null);
  const [copied, setCopied] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const canAll = who?.namespaces.includes("*") ?? false;

  async function submit(event: FormEvent) {
    event.preventDefault();
    if (!gateway) return;
    setError(null);
    setSecret(null);
    setCopied(false);
    const body: Record<string, unknown> = { name: name.trim(), role, namespaces: allNamespaces ? ["*"] : chosen };
    if (lifetime) body.ttlSeconds = Number(lifetime);
    try {
      const created = await request<TokenView & { token: string }>(gateway, "POST", "/v1/tokens", { body });
      setSecret({ name: created.name, token: created.token });
      setName("");
      setChosen([]);
      onCreated();
    } catch (e) {
      setError(e as Error);
    }
  }

  return (
    <Section title="Create a token">
      <form className="stack" onSubmit={submit} aria-label="Create a token">
        <div className="row">
          <label htmlFor="token-name">Token name</label>
          <input id="token-name" value={name} onChange={(e) => setName(e.target.value)} required maxLength={100} />
          <label htmlFor="token-role">Role</label>
          <select id="token-role" value={role} onChange={(e) => setRole(e.target.value)}>
            <option value="read">read</option>
            <option value="write">write</option>
            <option value="admin">admin</option>
          </select>
          <label htmlFor="token-ttl">Expires after</label>
          <select id="token-ttl" value={lifetime} onChange={(e) => setLifetime(e.target.value)}>
            {LIFETIMES.map(([label, seconds]) => (
              <option key={label} value={seconds === null ? "" : String(seconds)}>
                {label}
              </option>
            ))}
          </select>
        </div>
        <fieldset>
          <legend>Namespaces</legend>
          {canAll ? (
            <label className="inline">
              <input type="checkbox" checked={allNamespaces} onChange={(e) => setAllNamespaces(e.target.checked)} /> All namespaces (*)
            </label>
          ) : null}
          {namespaces.map((n) => (
            <label className="inline" key={n}>
              <input
                type="checkbox"
                disabled={allNamespaces}
                checked={!allNamespaces && chosen.includes(n)}
                onChange={(e) => setChosen(e.target.checked ? [...chosen, n] : chosen.filter((x) => x !== n))}
              />{" "}
              {n}
            </label>
          ))}
        </fieldset>
        <div className="row">
          <button type="submit" disabled={!name.trim() || (!allNamespaces && chosen.length === 0)}>
            Create token
          </button>
        </div>
        <ErrorBox error={error} />
      </form>
      {secret ? (
        <div className="secret" role="status" aria-label="New token">
          <p>
            Token <strong>{secret.name}</strong> created. Copy its secret now: it is shown this once.
          </p>
          <code className="secret-value" aria-label="Token secret">
            {secret.token}
          </code>{" "}
          <button
            type="button"
            className="small"
            onClick={async () => {
              try {
                await navigator.clipboard.writeText(secret.token);
                setCopied(true);
              } catch {
                setCopied(false);
              }
            }}
          >
            {copied ? "Copied" : "Copy secret"}
          </button>{" "}
          <button type="button" className="small" onClick={() => setSecret(null)}>
            Done
          </button>
        </div>
      ) : null}
    </Section>
  );
}
