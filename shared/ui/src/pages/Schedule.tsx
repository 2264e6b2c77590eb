import { useState } from "react";
import { Link } from "react-router";
import { canWrite, nsPath, request, type Resource } from "../api";
import { ErrorBox, Fields, Section, Time, viewerZone } from "../components";
import { useConnection } from "../connection";
import { useLoad } from "../hooks";
import { uiPath } from "../kinds";
import { sessionPath } from "./Agent";

interface Fire {
  fireAt: string;
  reason: string;
  sessionId: string | null;
  turnId: string | null;
  outcome: string;
  error: string | null;
}

const FIRST_PAGE = 20;
const MAX_FIRES = 100; // what GET .../fires?limit= allows

export function nextFireCell(schedule: Resource) {
  if (schedule.spec?.enabled === false) return <span className="muted">disabled</span>;
  return <Time iso={schedule.status?.nextFireAt} />;
}

export function SchedulePanels({ ns, schedule, reload }: { ns: string; schedule: Resource; reload: () => void }) {
  const { gateway, who } = useConnection();
  const [error, setError] = useState<Error | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const spec = schedule.spec ?? {};
  const target = spec.target ?? {};
  const zone: string = spec.timezone ?? "UTC";
  const name = schedule.metadata.name;
  const [limit, setLimit] = useState(FIRST_PAGE);
  // The schedule's own status has its last 5 fires; .../fires has up to 100.
  const history = useLoad(`${ns}/fires/${name}/${limit}/${schedule.metadata.resourceVersion}`, (gw, signal) =>
    request<{ items: Fire[] }>(gw, "GET", `${nsPath(ns, "schedules", name, "fires")}?limit=${limit}`, { signal }),
  );
  const fires: Fire[] = history.data?.items ?? schedule.status?.lastFires ?? [];
  const enabled = spec.enabled !== false;

  async function act(what: () => Promise<string>) {
    setError(null);
    setNotice(null);
    try {
      setNotice(await what());
      reload();
      history.reload();
    } catch (e) {
      setError(e as Error);
    }
  }

  return (
    <>
      <Section title="Schedule">
        <Fields
          rows={[
            ["When", spec.kind === "once" ? `once at ${spec.at}` : <code>{spec.cron}</code>],
            ["Time zone", zone],
            ["Enabled", enabled ? "yes" : "no"],
            ["Agent", <Link to={uiPath(ns, "agents", target.agent)}>{target.agent}</Link>],
            [
              "Session",
              target.sessionMode === "named" ? (
                <Link to={sessionPath(ns, target.agent, target.sessionId)}>{target.sessionId}</Link>
              ) : (
                "a new session per fire"
              ),
            ],
            ["Missed fires", spec.missedFirePolicy ?? "fireOnce"],
            [
              `Next fire (${zone})`,
              enabled ? <Time iso={schedule.status?.nextFireAt} zone={zone} /> : <span className="muted">disabled</span>,
            ],
            [`Next fire (yours, ${viewerZone})`, enabled ? <Time iso={schedule.status?.nextFireAt} /> : null],
            ["Message", <span className="prewrap">{spec.inputMessage}</span>],
          ]}
        />
        {canWrite(who) && gateway ? (
          <div className="row">
            <button
              type="button"
              onClick={() =>
                act(async () => {
                  const result = await request<{ outcome?: string; sessionId?: string }>(gateway, "POST", nsPath(ns, "schedules", name, "run"));
                  return `Fired: ${result.outcome ?? "queued"}${result.sessionId ? ` in session ${result.sessionId}` : ""}`;
                })
              }
            >
              Run now
            </button>
            <button
              type="button"
              onClick={() =>
                act(async () => {
                  await request(gateway, "PATCH", nsPath(ns, "schedules", name), { body: { spec: { enabled: !enabled } } });
                  return enabled ? "Disabled" : "Enabled";
                })
              }
            >
              {enabled ? "Disable" : "Enable"}
            </button>
          </div>
        ) : null}
        {notice ? <p role="status">{notice}</p> : null}
        <ErrorBox error={error} />
      </Section>
      <Section title="Last fires">
        <ErrorBox error={history.error} />
        {fires.length === 0 ? (
          <p className="muted">Not fired yet.</p>
        ) : (
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Fire time</th>
                  <th scope="col">Reason</th>
                  <th scope="col">Outcome</th>
                  <th scope="col">Turn</th>
                </tr>
              </thead>
              <tbody>
                {fires.map((f) => (
                  <tr key={`${f.fireAt}-${f.turnId}`}>
                    <td>
                      <Time iso={f.fireAt} zone={zone} />
                    </td>
                    <td>{f.reason}</td>
                    <td>
                      {f.outcome}
                      {f.error ? <span className="error-inline"> {f.error}</span> : null}
                    </td>
                    <td>
                      {f.sessionId && f.turnId ? (
                        <Link to={`${sessionPath(ns, target.agent, f.sessionId)}#turn-${f.turnId}`}>
                          {f.sessionId} / {f.turnId.slice(0, 8)}
                        </Link>
                      ) : (
                        "—"
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
            <p className="muted">
              {fires.length} most recent fire{fires.length === 1 ? "" : "s"}, newest first.{" "}
              {fires.length >= limit && limit < MAX_FIRES ? (
                <button type="button" className="small" onClick={() => setLimit(MAX_FIRES)}>
                  Show more fires
                </button>
              ) : null}
            </p>
          </div>
        )}
      </Section>
    </>
  );
}
