import { Link, useNavigate, useParams } from "react-router";
import { listAll, nsPath, type Resource } from "../api";
import { ErrorBox, Loading } from "../components";
import { useLoad } from "../hooks";
import { KINDS, uiPath } from "../kinds";
import { bindingCovers } from "./Resources";

// The namespace's objects in columns by kind, references drawn as edges. The layout is
// deliberately simple (columns, no physics): a namespace holds tens of objects, and a stable
// picture is easier to read than a clever one. A reference to something missing is drawn as a
// red dashed node, a Failed agent in red; the table under the picture says the same in words.

const COLUMNS = ["schedules", "agents", "agent-templates", "mcp-bindings", "mcp-servers", "knowledge"];
const COL_WIDTH = 210;
const NODE_W = 170;
const NODE_H = 34;
const ROW_H = 50;
const TOP = 40;

interface Node {
  key: string;
  kind: string; // API path of the kind
  name: string;
  missing: boolean;
  failed: boolean;
  x: number;
  y: number;
}
interface Edge {
  from: string;
  to: string;
  label: string;
}

function key(kind: string, name: string): string {
  return `${kind}/${name}`;
}

export function buildGraph(objects: Record<string, Resource[]>): { nodes: Node[]; edges: Edge[] } {
  const present = new Map<string, Resource>();
  for (const [kind, items] of Object.entries(objects)) for (const r of items) present.set(key(kind, r.metadata.name), r);
  const edges: Edge[] = [];
  const add = (from: string, kind: string, name: string | undefined, label: string) => {
    if (name) edges.push({ from, to: key(kind, name), label });
  };
  for (const a of objects.agents ?? []) {
    const from = key("agents", a.metadata.name);
    add(from, "agent-templates", a.spec?.templateRef, "template");
    const servers: string[] = a.status?.effective?.mcpServerRefs ?? a.spec?.overrides?.mcpServerRefs ?? [];
    for (const s of servers) add(from, "mcp-servers", s, "uses server");
  }
  for (const t of objects["agent-templates"] ?? []) {
    for (const s of t.definition?.mcpServerRefs ?? []) add(key("agent-templates", t.metadata.name), "mcp-servers", s, "server");
  }
  for (const b of objects["mcp-bindings"] ?? []) {
    const from = key("mcp-bindings", b.metadata.name);
    add(from, "mcp-servers", b.spec?.server, "binds server");
    for (const a of objects.agents ?? []) if (bindingCovers(b, a)) add(from, "agents", a.metadata.name, "covers agent");
    for (const n of b.spec?.agents?.names ?? []) if (!present.has(key("agents", n))) add(from, "agents", n, "names agent");
  }
  for (const s of objects.schedules ?? []) add(key("schedules", s.metadata.name), "agents", s.spec?.target?.agent, "wakes");

  const columns = new Map<string, Node[]>(COLUMNS.map((c) => [c, []]));
  const place = (kind: string, name: string, missing: boolean, failed: boolean) => {
    const column = columns.get(kind)!;
    column.push({ key: key(kind, name), kind, name, missing, failed, x: 0, y: 0 });
  };
  for (const kind of COLUMNS) for (const r of objects[kind] ?? []) place(kind, r.metadata.name, false, r.status?.phase === "Failed");
  const seen = new Set([...present.keys()]);
  for (const e of edges) {
    if (!seen.has(e.to)) {
      seen.add(e.to);
      const [kind, ...rest] = e.to.split("/");
      place(kind, rest.join("/"), true, false);
    }
  }
  const nodes: Node[] = [];
  COLUMNS.forEach((kind, i) => {
    columns.get(kind)!.forEach((n, row) => {
      n.x = 10 + i * COL_WIDTH;
      n.y = TOP + row * ROW_H;
      nodes.push(n);
    });
  });
  return { nodes, edges };
}

export function GraphPage() {
  const { ns = "" } = useParams();
  const navigate = useNavigate();
  const loaded = useLoad(`${ns}/graph`, async (gw, signal) => {
    const lists = await Promise.all(COLUMNS.map((kind) => listAll<Resource>(gw, nsPath(ns, kind), signal)));
    return Object.fromEntries(COLUMNS.map((kind, i) => [kind, lists[i]]));
  });
  if (loaded.error) return <ErrorBox error={loaded.error} />;
  if (!loaded.data) return <Loading what="the graph" />;
  const { nodes, edges } = buildGraph(loaded.data);
  const byKey = new Map(nodes.map((n) => [n.key, n]));
  const height = Math.max(...nodes.map((n) => n.y + NODE_H + 20), TOP + NODE_H + 20);
  const width = COLUMNS.length * COL_WIDTH;
  const broken = edges.filter((e) => byKey.get(e.to)?.missing);
  const failed = nodes.filter((n) => n.failed);

  return (
    <div className="graph">
      <h1>
        Graph <span className="muted">of {ns}</span>
      </h1>
      {broken.length || failed.length ? (
        <p className="warn" role="status">
          {failed.length ? `${failed.length} failed agent${failed.length > 1 ? "s" : ""}: ${failed.map((n) => n.name).join(", ")}. ` : ""}
          {broken.length ? `${broken.length} reference${broken.length > 1 ? "s" : ""} to missing objects.` : ""}
        </p>
      ) : null}
      <div className="graph-scroll">
        <svg viewBox={`0 0 ${width} ${height}`} width={width} height={height} role="img" aria-label={`Object graph of ${ns}`}>
          <defs>
            <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
              <path d="M 0 0 L 10 5 L 0 10 z" fill="#8a96a6" />
            </marker>
          </defs>
          {COLUMNS.map((kind, i) => (
            <text key={kind} x={10 + i * COL_WIDTH} y={20} className="graph-col">
              {KINDS.find((k) => k.path === kind)?.label}
            </text>
          ))}
          {edges.map((e, i) => {
            const a = byKey.get(e.from);
            const b = byKey.get(e.to);
            if (!a || !b) return null;
            const leftToRight = a.x <= b.x;
            const x1 = leftToRight ? a.x + NODE_W : a.x;
            const x2 = leftToRight ? b.x : b.x + NODE_W;
            const y1 = a.y + NODE_H / 2;
            const y2 = b.y + NODE_H / 2;
            const bend = Math.max(40, Math.abs(x2 - x1) / 2) * (leftToRight ? 1 : -1);
            return (
              <path
                key={i}
                d={`M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`}
                className={`graph-edge${b.missing ? " broken" : ""}`}
                markerEnd="url(#arrow)"
              >
                <title>{`${a.name} ${e.label} ${b.name}`}</title>
              </path>
            );
          })}
          {nodes.map((n) => {
            const href = uiPath(ns, n.kind, n.name);
            const state = n.missing ? "missing" : n.failed ? "failed" : "ok";
            const label = `${KINDS.find((k) => k.path === n.kind)?.singular} ${n.name}`;
            if (n.missing)
              // Nothing to open: a picture with a name, not a link that goes nowhere.
              return (
                <g key={n.key} role="img" aria-label={`${label} (missing)`} className="graph-node missing" data-node={n.key}>
                  <rect x={n.x} y={n.y} width={NODE_W} height={NODE_H} rx={6} />
                  <text x={n.x + 10} y={n.y + NODE_H / 2 + 5}>
                    {n.name.length > 22 ? `${n.name.slice(0, 21)}…` : n.name}
                  </text>
                </g>
              );
            return (
              <a
                key={n.key}
                href={`/ui${href}`}
                onClick={(event) => {
                  event.preventDefault();
                  navigate(href);
                }}
                aria-label={`${label}${n.failed ? " (Failed)" : ""}`}
                className={`graph-node ${state}`}
                data-node={n.key}
              >
                <rect x={n.x} y={n.y} width={NODE_W} height={NODE_H} rx={6} />
                <text x={n.x + 10} y={n.y + NODE_H / 2 + 5}>
                  {n.name.length > 22 ? `${n.name.slice(0, 21)}…` : n.name}
                </text>
              </a>
            );
          })}
        </svg>
      </div>
      <h2>References</h2>
      <div className="table-wrap">
        <table aria-label="References">
          <thead>
            <tr>
              <th scope="col">From</th>
              <th scope="col">Reference</th>
              <th scope="col">To</th>
            </tr>
          </thead>
          <tbody>
            {edges.map((e, i) => {
              const a = byKey.get(e.from)!;
              const b = byKey.get(e.to)!;
              return (
                <tr key={i} className={b.missing ? "broken" : undefined}>
                  <td>
                    <Link to={uiPath(ns, a.kind, a.name)}>{a.name}</Link> <span className="muted">{a.kind}</span>
                  </td>
                  <td>{e.label}</td>
                  <td>
                    {b.missing ? (
                      <span className="error-inline">{b.name} (missing)</span>
                    ) : (
                      <Link to={uiPath(ns, b.kind, b.name)}>{b.name}</Link>
                    )}{" "}
                    <span className="muted">{b.kind}</span>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
    </div>
  );
}
