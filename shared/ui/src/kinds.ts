// The namespaced kinds as the API names them; UI paths mirror API paths
// (/ui/ns/acme/mcp-bindings/x <-> /v1/ns/acme/mcp-bindings/x).

export interface KindInfo {
  path: string;
  kind: string;
  label: string;
  singular: string;
}

export const KINDS: KindInfo[] = [
  { path: "agents", kind: "Agent", label: "Agents", singular: "Agent" },
  { path: "agent-templates", kind: "AgentTemplate", label: "Templates", singular: "Template" },
  { path: "schedules", kind: "Schedule", label: "Schedules", singular: "Schedule" },
  { path: "knowledge", kind: "Knowledge", label: "Knowledge", singular: "Knowledge" },
  { path: "mcp-servers", kind: "MCPServer", label: "MCP servers", singular: "MCP server" },
  { path: "mcp-bindings", kind: "MCPBinding", label: "Bindings", singular: "MCP binding" },
];

export function kindByPath(path: string | undefined): KindInfo | undefined {
  return KINDS.find((k) => k.path === path);
}

export function kindByName(kind: string): KindInfo | undefined {
  return KINDS.find((k) => k.kind === kind);
}

export function uiPath(ns: string, kindPath: string, name?: string): string {
  const base = `/ns/${encodeURIComponent(ns)}/${kindPath}`;
  return name === undefined ? base : `${base}/${encodeURIComponent(name)}`;
}
