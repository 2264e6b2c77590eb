import type { ReactNode } from "react";
import { stringify } from "yaml";

export function ErrorBox({ error, title }: { error: Error | null | undefined; title?: string }) {
  if (!error) return null;
  return (
    <div className="error" role="alert">
      {title ? <strong>{title}: </strong> : null}
      {error.message}
    </div>
  );
}

export function Loading({ what }: { what: string }) {
  return (
    <p className="muted" role="status">
      Loading {what}…
    </p>
  );
}

export function Yaml({ value, label = "YAML" }: { value: unknown; label?: string }) {
  return (
    <section aria-label={label}>
      <h2>{label}</h2>
      <pre className="yaml" tabIndex={0}>
        {stringify(value, { lineWidth: 0 })}
      </pre>
    </section>
  );
}

export function Phase({ phase }: { phase: string | undefined }) {
  if (!phase) return null;
  return <span className={`badge phase-${phase.toLowerCase()}`}>{phase}</span>;
}

export function Section({ title, children }: { title: string; children: ReactNode }) {
  return (
    <section aria-label={title} id={title.toLowerCase().replace(/\W+/g, "-")}>
      <h2>{title}</h2>
      {children}
    </section>
  );
}

export function Fields({ rows }: { rows: [string, ReactNode][] }) {
  return (
    <dl className="fields">
      {rows
        .filter(([, value]) => value !== undefined && value !== null && value !== "")
        .map(([name, value]) => (
          <div key={name}>
            <dt>{name}</dt>
            <dd>{value}</dd>
          </div>
        ))}
    </dl>
  );
}

const viewerZone = Intl.DateTimeFormat().resolvedOptions().timeZone;

export function formatTime(iso: string | null | undefined, timeZone?: string): string {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return new Intl.DateTimeFormat(undefined, {
    dateStyle: "medium",
    timeStyle: "long",
    timeZone: timeZone ?? viewerZone,
  }).format(date);
}

export function Time({ iso, zone }: { iso: string | null | undefined; zone?: string }) {
  if (!iso) return <span className="muted">—</span>;
  return <time dateTime={iso}>{formatTime(iso, zone)}</time>;
}

export function age(iso: string | undefined): string {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (seconds < 60) return `${Math.round(seconds)}s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)}h`;
  return `${Math.round(seconds / 86400)}d`;
}

export { viewerZone };
