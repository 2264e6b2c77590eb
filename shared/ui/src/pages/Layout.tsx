import { Link, NavLink, Navigate, Outlet, useLocation, useNavigate, useParams } from "react-router";
import { canWrite } from "../api";
import { ErrorBox, Loading } from "../components";
import { useConnection } from "../connection";
import { KINDS } from "../kinds";
import { ConnectPage } from "./Connect";

/** Every page but /connect: without a saved gateway the connect form takes the page's place. */
export function RequireGateway() {
  const { gateway } = useConnection();
  if (!gateway) return <ConnectPage inline />;
  return <Layout />;
}

function Layout() {
  const { gateways, gateway, who, namespaces, error, loading, switchTo } = useConnection();
  const { ns } = useParams();
  const navigate = useNavigate();
  const location = useLocation();
  const section = location.pathname.split("/")[3] ?? "agents"; // /ns/{ns}/{section}/...

  return (
    <div className="app">
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <Link to="/" className="brand" aria-label="Talon home">
          <svg viewBox="0 0 32 32" width="22" height="22" aria-hidden="true">
            <path d="M8 24 L16 8 L24 24 L16 19 Z" fill="#f5b942" />
          </svg>
          Talon
        </Link>
        <label className="inline">
          <span>Gateway</span>
          <select
            value={gateway?.id}
            onChange={(e) => {
              switchTo(e.target.value);
              navigate("/");
            }}
          >
            {gateways.map((g) => (
              <option key={g.id} value={g.id}>
                {g.name}
              </option>
            ))}
          </select>
        </label>
        <Link to="/connect" className="small">
          Manage gateways
        </Link>
        {who?.role === "admin" ? (
          <Link to="/tokens" className="small">
            Tokens
          </Link>
        ) : null}
        {namespaces.length > 0 ? (
          <label className="inline">
            <span>Namespace</span>
            <select
              value={ns ?? ""}
              onChange={(e) => navigate(`/ns/${encodeURIComponent(e.target.value)}/${section === "graph" || section === "apply" ? section : KINDS.some((k) => k.path === section) ? section : "agents"}`)}
            >
              {ns && !namespaces.includes(ns) ? <option value={ns}>{ns}</option> : null}
              {!ns ? <option value="">—</option> : null}
              {namespaces.map((n) => (
                <option key={n} value={n}>
                  {n}
                </option>
              ))}
            </select>
          </label>
        ) : null}
        <div className="identity" aria-label="Identity" role="group">
          <span className="muted">{gateway?.url}</span>
          {who ? (
            <>
              <span title="token name">{who.name}</span>
              <span className={`badge role-${who.role}`} aria-label={`Role ${who.role}`}>
                {who.role}
              </span>
              <span className="muted" aria-label="Token namespaces">
                ns: {who.namespaces.join(", ")}
              </span>
            </>
          ) : null}
        </div>
      </header>
      <div className="body">
        {ns ? (
          <nav aria-label="Resources" className="sidenav">
            <ul>
              {KINDS.map((k) => (
                <li key={k.path}>
                  <NavLink to={`/ns/${encodeURIComponent(ns)}/${k.path}`}>{k.label}</NavLink>
                </li>
              ))}
              <li>
                <NavLink to={`/ns/${encodeURIComponent(ns)}/graph`}>Graph</NavLink>
              </li>
              {canWrite(who) ? (
                <li>
                  <NavLink to={`/ns/${encodeURIComponent(ns)}/apply`}>Apply</NavLink>
                </li>
              ) : null}
            </ul>
          </nav>
        ) : null}
        <main className="content" id="main" tabIndex={-1}>
          <ErrorBox error={error} title={`Gateway ${gateway?.name}`} />
          {error?.status === 401 ? (
            <p>
              The token was refused. <Link to="/connect">Connect with another token</Link>.
            </p>
          ) : null}
          {loading && !who ? <Loading what="identity" /> : <Outlet />}
        </main>
      </div>
    </div>
  );
}

/** /ui/: the first namespace the token sees. */
export function Home() {
  const { namespaces, who, loading, error } = useConnection();
  if (error) return null; // the layout shows it, with a way to reconnect
  if (loading || !who) return <Loading what="namespaces" />;
  if (namespaces.length === 0)
    return (
      <div>
        <h1>No namespaces</h1>
        <p>This token sees no namespace yet. An admin can create one with <code>talon apply</code>.</p>
      </div>
    );
  return <Navigate to={`/ns/${encodeURIComponent(namespaces[0])}/agents`} replace />;
}
