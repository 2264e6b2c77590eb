import { useState, type ChangeEvent } from "react";
import { Link, useParams } from "react-router";
import { ApiError, canWrite, nsPath, request, type Resource } from "../api";
import { useConnection } from "../connection";
import { diffManifests, type FieldChange } from "../diff";
import { kindByName, uiPath } from "../kinds";

interface ApplyItem {
  kind: string;
  namespace: string | null;
  name: string;
  action: "created" | "configured" | "unchanged";
  resourceVersion: string;
  object: Record<string, any>;
}

interface Outcome {
  dryRun: boolean;
  items: (ApplyItem & { changes: FieldChange[] })[];
}

export function ApplyPage() {
  const { ns = "" } = useParams();
  const { gateway, who } = useConnection();
  const [text, setText] = useState("");
  const [outcome, setOutcome] = useState<Outcome | null>(null);
  const [error, setError] = useState<ApiError | null>(null);
  const [busy, setBusy] = useState(false);
  if (!canWrite(who)) return <p>Applying manifests needs a token with the write role.</p>;

  async function upload(event: ChangeEvent<HTMLInputElement>) {
    const file = event.target.files?.[0];
    if (file) setText(await file.text());
  }

  async function run(dryRun: boolean) {
    if (!gateway) return;
    setBusy(true);
    setError(null);
    setOutcome(null);
    try {
      const result = await request<{ dryRun: boolean; items: ApplyItem[] }>(gateway, "POST", `/v1/apply${dryRun ? "?dryRun=true" : ""}`, { yaml: text });
      // The field-level diff: what each configured item is now against what it would be.
      const items = await Promise.all(
        result.items.map(async (item) => {
          if (item.action !== "configured" || !dryRun) return { ...item, changes: [] };
          const current = await currentObject(item).catch(() => null);
          return { ...item, changes: diffManifests(current, item.object) };
        }),
      );
      setOutcome({ dryRun: result.dryRun, items });
    } catch (e) {
      setError(e instanceof ApiError ? e : new ApiError(0, "error", String(e)));
    } finally {
      setBusy(false);
    }
  }

  async function currentObject(item: ApplyItem): Promise<Record<string, any>> {
    if (!gateway) throw new Error("no gateway");
    if (item.kind === "Namespace") return request(gateway, "GET", `/v1/namespaces/${encodeURIComponent(item.name)}`);
    const kind = kindByName(item.kind);
    if (!kind || !item.namespace) throw new Error(`unknown kind ${item.kind}`);
    return request<Resource>(gateway, "GET", nsPath(item.namespace, kind.path, item.name)) as Promise<Record<string, any>>;
  }

  return (
    <div>
      <h1>Apply manifests</h1>
      <p className="muted">
        Paste or upload YAML (several documents separated by <code>---</code>) or JSON. A dry run validates everything and says
        what would change without writing; Apply writes all of it in one transaction, or nothing.
      </p>
      <label htmlFor="manifests">Manifests (YAML)</label>
      <textarea id="manifests" rows={14} value={text} onChange={(e) => setText(e.target.value)} spellCheck={false} className="code" />
      <div className="row">
        <label htmlFor="upload">Upload YAML</label>
        <input id="upload" type="file" accept=".yaml,.yml,.json,application/yaml,application/json" onChange={upload} />
      </div>
      <div className="row">
        <button type="button" disabled={busy || !text.trim()} onClick={() => run(true)}>
          Dry run
        </button>
        <button type="button" disabled={busy || !text.trim()} onClick={() => run(false)}>
          Apply
        </button>
      </div>
      {error ? (
        <div className="error" role="alert">
          {error.message}
          {error.details.length ? (
            <ul>
              {error.details.map((d, i) => (
                <li key={i}>
                  <code>{d.path}</code>: {d.message}
                </li>
              ))}
            </ul>
          ) : null}
        </div>
      ) : null}
      {outcome ? (
        <section aria-label="Result">
          <h2>{outcome.dryRun ? "Dry run: nothing was written" : "Applied"}</h2>
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Object</th>
                  <th scope="col">{outcome.dryRun ? "Would be" : "Result"}</th>
                  <th scope="col">Changes</th>
                </tr>
              </thead>
              <tbody>
                {outcome.items.map((item) => {
                  const kind = kindByName(item.kind);
                  const target = item.namespace ?? ns;
                  return (
                    <tr key={`${item.kind}/${item.namespace}/${item.name}`}>
                      <th scope="row">
                        <span className="muted">{item.kind}</span>{" "}
                        {kind && !outcome.dryRun ? <Link to={uiPath(target, kind.path, item.name)}>{item.name}</Link> : item.name}
                        {item.namespace ? <span className="muted"> in {item.namespace}</span> : null}
                      </th>
                      <td>
                        <span className={`badge action-${item.action}`}>{item.action}</span>
                      </td>
                      <td>
                        {item.changes.length ? (
                          <ul className="changes">
                            {item.changes.map((c) => (
                              <li key={c.path}>
                                <code>{c.path}</code>: <del>{show(c.before)}</del> → <ins>{show(c.after)}</ins>
                              </li>
                            ))}
                          </ul>
                        ) : null}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        </section>
      ) : null}
    </div>
  );
}

function show(value: unknown): string {
  return value === undefined ? "(none)" : JSON.stringify(value);
}
