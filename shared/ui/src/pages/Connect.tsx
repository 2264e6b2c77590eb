import { useState, type FormEvent } from "react";
import { useLocation, useNavigate } from "react-router";
import { useConnection } from "../connection";

/** The connect form and the saved gateways. Shown at /ui/connect, and in place of any page
 *  while no gateway is saved (the deep link then loads once connected). */
export function ConnectPage({ inline = false }: { inline?: boolean }) {
  const { gateways, gateway, connect, switchTo, remove } = useConnection();
  const navigate = useNavigate();
  const location = useLocation();
  const [name, setName] = useState("");
  const [url, setUrl] = useState(() => window.location.origin);
  const [token, setToken] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await connect({ name, url, token });
      setToken("");
      // Inline (a deep link without a gateway): stay on it; otherwise go home.
      if (!inline) navigate("/");
      else navigate(location.pathname + location.search, { replace: true });
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(false);
    }
  }

  return (
    <main className="connect" id="main">
      <h1>Connect to a Talon gateway</h1>
      <form onSubmit={submit} aria-label="Connect">
        <label htmlFor="gw-name">Name</label>
        <input id="gw-name" value={name} onChange={(e) => setName(e.target.value)} placeholder="e.g. local, prod" autoComplete="off" />
        <label htmlFor="gw-url">Gateway URL</label>
        <input id="gw-url" type="url" required value={url} onChange={(e) => setUrl(e.target.value)} autoComplete="url" />
        <label htmlFor="gw-token">Token</label>
        <input
          id="gw-token"
          type="password"
          required
          value={token}
          onChange={(e) => setToken(e.target.value)}
          autoComplete="off"
          aria-describedby="gw-token-help"
        />
        <p id="gw-token-help" className="muted">
          A bearer token (<code>tln_…</code> or the admin token <code>talon dev</code> prints). It is kept in this browser's
          local storage for this gateway only, and sent only in the Authorization header.
        </p>
        <button type="submit" disabled={busy}>
          Connect
        </button>
        {error ? (
          <p className="error" role="alert">
            {error}
          </p>
        ) : null}
      </form>

      {gateways.length > 0 ? (
        <section aria-label="Saved gateways">
          <h2>Saved gateways</h2>
          <ul className="gateways">
            {gateways.map((g) => (
              <li key={g.id} aria-current={g.id === gateway?.id ? "true" : undefined}>
                <span>
                  <strong>{g.name}</strong> <span className="muted">{g.url}</span>
                  {g.id === gateway?.id ? <span className="badge">current</span> : null}
                </span>
                <span className="actions">
                  <button
                    type="button"
                    aria-label={`Use gateway ${g.name}`}
                    onClick={() => {
                      switchTo(g.id);
                      navigate("/");
                    }}
                  >
                    Use
                  </button>
                  <button type="button" className="danger" aria-label={`Remove gateway ${g.name}`} onClick={() => remove(g.id)}>
                    Remove
                  </button>
                </span>
              </li>
            ))}
          </ul>
        </section>
      ) : null}
    </main>
  );
}
