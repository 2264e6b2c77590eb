// The agent's effective tools, from GET .../agents/{agent}/tools: what a turn would offer the
// model now (the worker's own resolution), each with its source and the bindings that allow it.
import { Link } from "react-router";
import { nsPath, request } from "../api";
import { ErrorBox, Loading, Section } from "../components";
import { useLoad } from "../hooks";
import { uiPath } from "../kinds";

interface ToolSource {
  type: "builtin" | "skill" | "mcp";
  skill?: string;
  server?: string;
  tool?: string;
  allowedBy?: string[];
}
interface EffectiveTool {
  name: string;
  description: string;
  readOnlyHint?: boolean | null;
  source: ToolSource;
}
interface ServerBinding {
  name: string;
  allow: string[] | null;
  deny: string[];
  readOnly: boolean;
}
interface ServerTools {
  server: string;
  state: "available" | "unavailable" | "unbound";
  error: string | null;
  bindings: ServerBinding[];
  tools: string[];
  withheld: string[];
}
export interface AgentToolsView {
  agent: string;
  tools: EffectiveTool[];
  servers: ServerTools[];
  unavailable: { source: string; error: string }[];
}

function rules(b: ServerBinding): string {
  const parts = [`allow ${b.allow ? b.allow.join(", ") : "all"}`];
  if (b.deny.length) parts.push(`deny ${b.deny.join(", ")}`);
  if (b.readOnly) parts.push("read-only");
  return parts.join(", ");
}

function SourceCell({ ns, source }: { ns: string; source: ToolSource }) {
  switch (source.type) {
    case "builtin":
      return <>built-in</>;
    case "skill":
      return <>skill {source.skill} (the template's skills)</>;
    case "mcp":
      return (
        <>
          MCP server <Link to={uiPath(ns, "mcp-servers", source.server ?? "")}>{source.server}</Link>
        </>
      );
  }
}

export function AgentTools({ ns, agent }: { ns: string; agent: string }) {
  const loaded = useLoad(`${ns}/agent-tools/${agent}`, (gw, signal) =>
    request<AgentToolsView>(gw, "GET", nsPath(ns, "agents", agent, "tools"), { signal }),
  );
  const view = loaded.data;
  return (
    <Section title="Tools">
      <p className="muted">
        What a turn of this agent is offered now, as the worker resolves it: built-ins, the template's skills and each MCP
        server's tools that a binding covering the agent permits (bindings add up; deny wins; a read-only binding admits only
        tools that declare <code>readOnlyHint</code>).{" "}
        <button type="button" className="small" onClick={loaded.reload} disabled={loaded.loading}>
          Refresh tools
        </button>
      </p>
      <ErrorBox error={loaded.error} />
      {loaded.loading && !view ? <Loading what="tools (contacting MCP servers)" /> : null}
      {view ? (
        <>
          <div className="table-wrap">
            <table aria-label="Effective tools" className="tools-table">
              <thead>
                <tr>
                  <th scope="col">Tool</th>
                  <th scope="col">Source</th>
                  <th scope="col">Allowed by</th>
                  <th scope="col" className="desc">
                    Description
                  </th>
                </tr>
              </thead>
              <tbody>
                {view.tools.map((t) => (
                  <tr key={t.name}>
                    <th scope="row" title={t.description}>
                      <code>{t.name}</code>
                      {t.readOnlyHint ? <span className="muted"> (read-only)</span> : null}
                    </th>
                    <td>
                      <SourceCell ns={ns} source={t.source} />
                    </td>
                    <td>
                      {t.source.type === "mcp" ? (
                        <ul className="links">
                          {(t.source.allowedBy ?? []).map((b) => (
                            <li key={b}>
                              <Link to={uiPath(ns, "mcp-bindings", b)}>{b}</Link>
                            </li>
                          ))}
                        </ul>
                      ) : t.source.type === "builtin" ? (
                        "every agent"
                      ) : (
                        "the template"
                      )}
                    </td>
                    <td className="muted desc">{t.description}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          {view.servers.length > 0 ? (
            <div className="table-wrap">
              <table aria-label="MCP servers of this agent" className="tools-table">
                <thead>
                  <tr>
                    <th scope="col">MCP server</th>
                    <th scope="col">State</th>
                    <th scope="col">Bindings (rules)</th>
                    <th scope="col">Withheld tools</th>
                  </tr>
                </thead>
                <tbody>
                  {view.servers.map((s) => (
                    <tr key={s.server} data-state={s.state}>
                      <th scope="row">
                        <Link to={uiPath(ns, "mcp-servers", s.server)}>{s.server}</Link>
                      </th>
                      <td>
                        {s.state === "available" ? (
                          `${s.tools.length} tool${s.tools.length === 1 ? "" : "s"} offered`
                        ) : s.state === "unbound" ? (
                          <span className="warn">no binding covers this agent: none of its tools are offered</span>
                        ) : (
                          <span className="warn">unreachable: {s.error}</span>
                        )}
                      </td>
                      <td>
                        <ul className="links">
                          {s.bindings.map((b) => (
                            <li key={b.name}>
                              <Link to={uiPath(ns, "mcp-bindings", b.name)}>{b.name}</Link> <span className="muted">{rules(b)}</span>
                            </li>
                          ))}
                        </ul>
                      </td>
                      <td>{s.withheld.length ? s.withheld.map((w) => <code key={w}>{w} </code>) : <span className="muted">none</span>}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          ) : null}
          {view.unavailable
            .filter((u) => u.source.startsWith("skill:"))
            .map((u) => (
              <p key={u.source} className="warn">
                {u.source}: {u.error}
              </p>
            ))}
        </>
      ) : null}
    </Section>
  );
}
