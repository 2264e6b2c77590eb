import { useState, type FormEvent } from "react";
import { Link, useNavigate } from "react-router";
import { canWrite, listAll, nsPath, request, type Resource } from "../api";
import { age, ErrorBox, Fields, Section } from "../components";
import { useConnection } from "../connection";
import { useLoad } from "../hooks";
import { uiPath } from "../kinds";
import { AgentTools } from "./AgentTools";
import { bindingCovers, LinkList, profiles } from "./Resources";

interface SessionSummary {
  id: string;
  status: string;
  activeTurn: { state: string } | null;
  queuedTurns: number;
  messageCount: number;
  updatedAt: string;
}

export function sessionPath(ns: string, agent: string, id?: string): string {
  const base = `${uiPath(ns, "agents", agent)}/sessions`;
  return id === undefined ? base : `${base}/${encodeURIComponent(id)}`;
}

export function AgentPanels({ ns, agent }: { ns: string; agent: Resource }) {
  const name = agent.metadata.name;
  const { who } = useConnection();
  const related = useLoad(`${ns}/agent-related/${name}`, async (gw, signal) => {
    const [bindings, schedules, sessions] = await Promise.all([
      listAll<Resource>(gw, nsPath(ns, "mcp-bindings"), signal),
      listAll<Resource>(gw, nsPath(ns, "schedules"), signal),
      listAll<SessionSummary>(gw, nsPath(ns, "agents", name, "sessions"), signal),
    ]);
    return { bindings, schedules, sessions };
  });
  const effective = agent.status?.effective ?? {};
  const servers: string[] = effective.mcpServerRefs ?? [];
  const bindings = (related.data?.bindings ?? []).filter((b) => bindingCovers(b, agent));
  const schedules = (related.data?.schedules ?? []).filter((s) => s.spec?.target?.agent === name);

  return (
    <>
      <Section title="Related">
        <Fields
          rows={[
            ["Template", <Link to={uiPath(ns, "agent-templates", agent.spec?.templateRef)}>{agent.spec?.templateRef}</Link>],
            ["MCP servers", <LinkList ns={ns} kind="mcp-servers" names={servers} />],
            ["Bindings", related.data ? <LinkList ns={ns} kind="mcp-bindings" names={bindings.map((b) => b.metadata.name)} /> : "…"],
            ["Schedules", related.data ? <LinkList ns={ns} kind="schedules" names={schedules.map((s) => s.metadata.name)} /> : "…"],
            ["Model profiles", profiles(effective.modelPolicy)],
          ]}
        />
      </Section>
      <AgentTools ns={ns} agent={name} />
      <Section title="Sessions">
        <ErrorBox error={related.error} />
        {canWrite(who) ? <NewSession ns={ns} agent={name} /> : null}
        {related.data && related.data.sessions.length === 0 ? <p className="muted">No sessions yet.</p> : null}
        {related.data && related.data.sessions.length > 0 ? (
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Session</th>
                  <th scope="col">Messages</th>
                  <th scope="col">Turn</th>
                  <th scope="col">Updated</th>
                </tr>
              </thead>
              <tbody>
                {related.data.sessions.map((s) => (
                  <tr key={s.id}>
                    <th scope="row">
                      <Link to={sessionPath(ns, name, s.id)}>{s.id}</Link>
                    </th>
                    <td>{s.messageCount}</td>
                    <td>{s.activeTurn ? `${s.activeTurn.state}${s.queuedTurns ? ` (+${s.queuedTurns} queued)` : ""}` : "idle"}</td>
                    <td>{age(s.updatedAt)} ago</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
      </Section>
    </>
  );
}

function NewSession({ ns, agent }: { ns: string; agent: string }) {
  const { gateway } = useConnection();
  const navigate = useNavigate();
  const [id, setId] = useState("");
  const [error, setError] = useState<Error | null>(null);
  async function submit(event: FormEvent) {
    event.preventDefault();
    if (!gateway) return;
    try {
      const body = id.trim() ? { id: id.trim() } : {};
      const created = await request<{ id: string }>(gateway, "POST", nsPath(ns, "agents", agent, "sessions"), { body });
      navigate(sessionPath(ns, agent, created.id));
    } catch (e) {
      setError(e as Error);
    }
  }
  return (
    <form className="row" onSubmit={submit} aria-label="New session">
      <label htmlFor="new-session">Session id</label>
      <input id="new-session" value={id} onChange={(e) => setId(e.target.value)} placeholder="e.g. enterprise-renewals (empty: generated)" />
      <button type="submit">Create session</button>
      <ErrorBox error={error} />
    </form>
  );
}
