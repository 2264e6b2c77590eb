// A field-level diff between two manifests, for the apply page's dry run: the API says
// whether an item would be created, configured or left unchanged; this says which fields.

export interface FieldChange {
  path: string;
  before: unknown;
  after: unknown;
}

// Only what a manifest declares; server-kept fields (uid, versions, timestamps, status)
// change on every write and would drown the real changes.
const COMPARED = ["metadata.labels", "metadata.annotations", "spec", "definition"];

function flatten(value: unknown, path: string, out: Map<string, unknown>): void {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const entries = Object.entries(value as Record<string, unknown>);
    if (entries.length === 0) out.set(path, {});
    for (const [k, v] of entries) flatten(v, path ? `${path}.${k}` : k, out);
  } else if (Array.isArray(value)) {
    if (value.length === 0) out.set(path, []);
    value.forEach((v, i) => flatten(v, `${path}[${i}]`, out));
  } else {
    out.set(path, value);
  }
}

function pick(manifest: Record<string, any> | null, path: string): unknown {
  let value: any = manifest;
  for (const part of path.split(".")) value = value?.[part];
  return value;
}

export function diffManifests(before: Record<string, any> | null, after: Record<string, any>): FieldChange[] {
  const a = new Map<string, unknown>();
  const b = new Map<string, unknown>();
  for (const root of COMPARED) {
    const left = pick(before, root);
    const right = pick(after, root);
    if (left !== undefined) flatten(left, root, a);
    if (right !== undefined) flatten(right, root, b);
  }
  const changes: FieldChange[] = [];
  for (const path of [...new Set([...a.keys(), ...b.keys()])].sort()) {
    const left = a.get(path);
    const right = b.get(path);
    if (JSON.stringify(left) !== JSON.stringify(right)) changes.push({ path, before: left, after: right });
  }
  return changes;
}
