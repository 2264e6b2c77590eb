import { Link, useParams } from "react-router";
import { listAll, nsPath, request, type Resource } from "../api";
import { age, ErrorBox, Fields, Loading, Phase, Section, Time, Yaml } from "../components";
import { useLoad } from "../hooks";
import { kindByPath, uiPath } from "../kinds";
import { AgentPanels } from "./Agent";
import { SchedulePanels, nextFireCell } from "./Schedule";

export function ResourceList() {
  const { ns = "", kind: kindPath } = useParams();
  const kind = kindByPath(kindPath);
  const loaded = useLoad(`${ns}/${kindPath}`, (gw, signal) =>
    kind ? listAll<Resource>(gw, nsPath(ns, kind.path), signal) : Promise.resolve([]),
  );
  if (!kind) return <p>No such kind: {kindPath}</p>;
  const items = loaded.data ?? [];
  return (
    <div>
      <h1>
        {kind.label} <span className="muted">in {ns}</span>
      </h1>
      <ErrorBox error={loaded.error} />
      {loaded.loading && !loaded.data ? <Loading what={kind.label.toLowerCase()} /> : null}
      {loaded.data && items.length === 0 ? <p className="muted">None yet.</p> : null}
      {items.length > 0 ? (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                {columns(kind.path).map((c) => (
                  <th scope="col" key={c.title}>
                    {c.title}
                  </th>
                ))}
                <th scope="col">Age</th>
              </tr>
            </thead>
            <tbody>
              {items.map((item) => (
                <tr key={item.metadata.name}>
                  <th scope="row">
                    <Link to={uiPath(ns, kind.path, item.metadata.name)}>{item.metadata.name}</Link>
                  </th>
                  {columns(kind.path).map((c) => (
                    <td key={c.title}>{c.cell(item, ns)}</td>
                  ))}
                  <td>{age(item.metadata.creationTimestamp)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </div>
  );
}

interface Column {
  title: string;
  cell: (r: Resource, ns: string) => React.ReactNode;
}

function columns(kindPath: string): Column[] {
  switch (kindPath) {
    case "agents":
      return [
        { title: "Template", cell: (r, ns) => <Link to={uiPath(ns, "agent-templates", r.spec?.templateRef)}>{r.spec?.templateRef}</Link> },
        { title: "Phase", cell: (r) => <Phase phase={r.status?.phase} /> },
      ];
    case "agent-templates":
      return [{ title: "MCP servers", cell: (r) => (r.definition?.mcpServerRefs ?? []).join(", ") }];
    case "schedules":
      return [
        { title: "When", cell: (r) => (r.spec?.kind === "once" ? `once at ${r.spec?.at}` : `${r.spec?.cron} (${r.spec?.timezone ?? "UTC"})`) },
        { title: "Agent", cell: (r, ns) => <Link to={uiPath(ns, "agents", r.spec?.target?.agent)}>{r.spec?.target?.agent}</Link> },
        { title: "Enabled", cell: (r) => (r.spec?.enabled === false ? "no" : "yes") },
        { title: "Next fire", cell: (r) => nextFireCell(r) },
      ];
    case "knowledge":
      return [{ title: "Title", cell: (r) => r.spec?.title }];
    case "mcp-servers":
      return [{ title: "URL", cell: (r) => <code>{r.spec?.url}</code> }];
    case "mcp-bindings":
      return [
        { title: "Server", cell: (r, ns) => <Link to={uiPath(ns, "mcp-servers", r.spec?.server)}>{r.spec?.server}</Link> },
        { title: "Agents", cell: (r) => subjects(r) },
      ];
    default:
      return [];
  }
}

export function subjects(binding: Resource): string {
  const agents = binding.spec?.agents ?? {};
  const parts: string[] = [...(agents.names ?? [])];
  const labels = agents.selector?.matchLabels;
  if (labels) parts.push(`labels ${Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(",") || "(any)"}`);
  return parts.join("; ");
}

/** Mirrors runtime/tools/policy.py binding_matches: by name, or every selector label equal. */
export function bindingCovers(binding: Resource, agent: Resource): boolean {
  const agents = binding.spec?.agents ?? {};
  if ((agents.names ?? []).includes(agent.metadata.name)) return true;
  const selector = agents.selector;
  if (!selector) return false;
  const labels = agent.metadata.labels ?? {};
  return Object.entries(selector.matchLabels ?? {}).every(([k, v]) => labels[k] === v);
}

export function ResourceDetail() {
  const { ns = "", kind: kindPath, name = "" } = useParams();
  const kind = kindByPath(kindPath);
  const loaded = useLoad(`${ns}/${kindPath}/${name}`, (gw, signal) =>
    kind ? request<Resource>(gw, "GET", nsPath(ns, kind.path, name), { signal }) : Promise.reject(new Error(`no such kind ${kindPath}`)),
  );
  if (!kind) return <p>No such kind: {kindPath}</p>;
  const resource = loaded.data;
  return (
    <div>
      <p className="crumbs">
        <Link to={uiPath(ns, kind.path)}>{kind.label}</Link> /
      </p>
      <h1>
        <span className="muted">{kind.singular}</span> {name} <Phase phase={resource?.status?.phase} />
      </h1>
      <ErrorBox error={loaded.error} />
      {loaded.loading && !resource ? <Loading what={name} /> : null}
      {resource ? (
        <>
          <Section title="Summary">
            <Fields
              rows={[
                ["Namespace", <Link to={uiPath(ns, "agents")}>{ns}</Link>],
                ["Labels", Object.entries(resource.metadata.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(", ")],
                ["Status", resource.status?.message],
                ["Version", resource.metadata.resourceVersion],
                ["Created", <Time iso={resource.metadata.creationTimestamp} />],
                ["Updated", <Time iso={resource.metadata.updateTimestamp} />],
              ]}
            />
          </Section>
          <KindPanels ns={ns} kindPath={kind.path} resource={resource} reload={loaded.reload} />
          <Yaml value={resource} />
        </>
      ) : null}
    </div>
  );
}

function KindPanels({ ns, kindPath, resource, reload }: { ns: string; kindPath: string; resource: Resource; reload: () => void }) {
  switch (kindPath) {
    case "agents":
      return <AgentPanels ns={ns} agent={resource} />;
    case "agent-templates":
      return <TemplatePanels ns={ns} template={resource} />;
    case "schedules":
      return <SchedulePanels ns={ns} schedule={resource} reload={reload} />;
    case "mcp-servers":
      return <ServerPanels ns={ns} server={resource} />;
    case "mcp-bindings":
      return <BindingPanels ns={ns} binding={resource} />;
    case "knowledge":
      return (
        <Section title="Document">
          <Fields rows={[["Title", resource.spec?.title], ["Source", resource.spec?.source], ["Content type", resource.spec?.contentType]]} />
          <pre className="yaml" tabIndex={0}>
            {resource.spec?.content}
          </pre>
        </Section>
      );
    default:
      return null;
  }
}

function TemplatePanels({ ns, template }: { ns: string; template: Resource }) {
  const name = template.metadata.name;
  const agents = useLoad(`${ns}/agents`, (gw, signal) => listAll<Resource>(gw, nsPath(ns, "agents"), signal));
  const using = (agents.data ?? []).filter((a) => a.spec?.templateRef === name);
  const definition = template.definition ?? {};
  return (
    <Section title="Related">
      <Fields
        rows={[
          ["Agents", agents.data ? <LinkList ns={ns} kind="agents" names={using.map((a) => a.metadata.name)} /> : "…"],
          ["MCP servers", <LinkList ns={ns} kind="mcp-servers" names={definition.mcpServerRefs ?? []} />],
          ["Skills", (definition.skills ?? []).join(", ")],
          ["Model profiles", profiles(definition.modelPolicy)],
        ]}
      />
    </Section>
  );
}

function ServerPanels({ ns, server }: { ns: string; server: Resource }) {
  const name = server.metadata.name;
  const data = useLoad(`${ns}/server-related`, async (gw, signal) => ({
    bindings: await listAll<Resource>(gw, nsPath(ns, "mcp-bindings"), signal),
    agents: await listAll<Resource>(gw, nsPath(ns, "agents"), signal),
  }));
  const bindings = (data.data?.bindings ?? []).filter((b) => b.spec?.server === name);
  const agents = (data.data?.agents ?? []).filter((a) => (a.status?.effective?.mcpServerRefs ?? []).includes(name));
  return (
    <Section title="Related">
      <Fields
        rows={[
          ["URL", <code>{server.spec?.url}</code>],
          ["Description", server.spec?.description],
          ["Headers", (server.spec?.headers ?? []).map((h: any) => `${h.name} from ${JSON.stringify(h.valueFrom)}`).join("; ")],
          ["Bindings", data.data ? <LinkList ns={ns} kind="mcp-bindings" names={bindings.map((b) => b.metadata.name)} /> : "…"],
          ["Agents referencing it", data.data ? <LinkList ns={ns} kind="agents" names={agents.map((a) => a.metadata.name)} /> : "…"],
        ]}
      />
    </Section>
  );
}

function BindingPanels({ ns, binding }: { ns: string; binding: Resource }) {
  const agents = useLoad(`${ns}/agents`, (gw, signal) => listAll<Resource>(gw, nsPath(ns, "agents"), signal));
  const covered = (agents.data ?? []).filter((a) => bindingCovers(binding, a));
  const tools = binding.spec?.tools ?? {};
  return (
    <Section title="Related">
      <Fields
        rows={[
          ["Server", <Link to={uiPath(ns, "mcp-servers", binding.spec?.server)}>{binding.spec?.server}</Link>],
          ["Subjects", subjects(binding)],
          ["Agents covered", agents.data ? <LinkList ns={ns} kind="agents" names={covered.map((a) => a.metadata.name)} /> : "…"],
          ["Allow", tools.allow ? tools.allow.join(", ") : "all tools"],
          ["Deny", (tools.deny ?? []).join(", ")],
          ["Read-only", binding.spec?.readOnly === false ? "no" : "yes: only tools that declare readOnlyHint"],
        ]}
      />
    </Section>
  );
}

export function LinkList({ ns, kind, names }: { ns: string; kind: string; names: string[] }) {
  if (names.length === 0) return <span className="muted">none</span>;
  return (
    <ul className="links">
      {names.map((n) => (
        <li key={n}>
          <Link to={uiPath(ns, kind, n)}>{n}</Link>
        </li>
      ))}
    </ul>
  );
}

export function profiles(policy: any): string {
  return (policy?.profiles ?? [])
    .map((p: any) => `${p.name}: ${p.model?.provider}/${p.model?.name}`)
    .join("; ");
}
