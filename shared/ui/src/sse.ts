// Server-Sent Events over fetch. EventSource cannot send an Authorization header, and the
// token must never go into a URL, so the session stream is read with fetch and parsed here
// (the WHATWG event-stream format: fields, comments, multi-line data, CR/LF line ends).

export interface SseMessage {
  id: string | null; // null: the event carried no id (stream.end), the position is unchanged
  event: string;
  data: string;
}

export class SseParser {
  private buffer = "";
  private id: string | null = null;
  private event = "";
  private data: string[] = [];
  private hasData = false;

  /** Feed decoded text; returns the events it completed. */
  push(text: string): SseMessage[] {
    this.buffer += text;
    const out: SseMessage[] = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (!match) break;
      // A lone CR at the end of the buffer may be the first half of a CRLF: wait for more.
      if (match[0] === "\r" && match.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const done = this.line(line);
      if (done) out.push(done);
    }
    return out;
  }

  private line(line: string): SseMessage | null {
    if (line === "") {
      const message = this.hasData ? { id: this.id, event: this.event || "message", data: this.data.join("\n") } : null;
      this.id = null;
      this.event = "";
      this.data = [];
      this.hasData = false;
      return message;
    }
    if (line.startsWith(":")) return null; // a comment: keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") {
      this.data.push(value);
      this.hasData = true;
    } else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
    return null;
  }
}

export interface StreamEvent {
  id: number;
  type: string;
  turnId: string | null;
  data: Record<string, any>;
  createdAt: string;
}

export type StreamStatus =
  | { state: "connecting"; after: number }
  | { state: "live"; after: number; resumed: boolean }
  | { state: "reconnecting"; after: number; reason: string; attempt: number }
  | { state: "ended"; reason: string; message: string };

export interface FollowOptions {
  url: string; // the stream route, absolute
  token: string;
  after: number; // the last event id already seen
  onEvent: (event: StreamEvent) => void;
  onStatus: (status: StreamStatus) => void;
  signal: AbortSignal;
  fetchImpl?: typeof fetch;
  sleep?: (ms: number) => Promise<void>;
}

const PERMANENT = new Set([401, 403, 404]);
// The gateway refuses a stream when it has as many open as it serves (503 busy) or the token
// has its share (429 too_many_streams), with Retry-After: wait that long before the next try.
const RETRY_LATER = new Set([429, 503]);
const MAX_RETRY_AFTER_MS = 60_000;

/** The wait a refusal asks for (Retry-After in seconds), in ms; 0 when it asks for none. */
export function retryAfterMs(response: Response): number {
  if (!RETRY_LATER.has(response.status)) return 0;
  const seconds = Number(response.headers.get("Retry-After"));
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds * 1000, MAX_RETRY_AFTER_MS) : 0;
}

/** Follow a session's stream until aborted: reconnect after any drop with Last-Event-ID, so
 *  nothing is missed or repeated; stop on stream.end (the token was revoked or expired) and
 *  on answers that a retry cannot change. Returns the last event id seen. */
export async function follow(options: FollowOptions): Promise<number> {
  const fetchImpl = options.fetchImpl ?? fetch.bind(globalThis);
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  let after = options.after;
  let attempt = 0;
  options.onStatus({ state: "connecting", after });
  while (!options.signal.aborted) {
    let reason = "the stream ended";
    let wait = 0; // at least this long before the next attempt (the server's Retry-After)
    try {
      const response = await fetchImpl(options.url, {
        headers: {
          Authorization: `Bearer ${options.token}`,
          "Last-Event-ID": String(after),
          Accept: "text/event-stream",
        },
        cache: "no-store",
        signal: options.signal,
      });
      if (!response.ok || !response.body) {
        let message = `HTTP ${response.status}`;
        try {
          message = (await response.json()).error.message ?? message;
        } catch {
          /* not JSON */
        }
        if (PERMANENT.has(response.status)) {
          options.onStatus({ state: "ended", reason: `http_${response.status}`, message });
          return after;
        }
        wait = retryAfterMs(response);
        throw new Error(message);
      }
      options.onStatus({ state: "live", after, resumed: attempt > 0 });
      attempt = 0;
      const parser = new SseParser();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const message of parser.push(value)) {
          if (message.event === "stream.end") {
            const end = JSON.parse(message.data);
            options.onStatus({ state: "ended", reason: end.reason, message: end.message });
            return after;
          }
          const event = JSON.parse(message.data) as StreamEvent;
          if (event.id <= after) continue; // already seen (never expected; cheap to guard)
          after = event.id;
          options.onEvent(event);
        }
      }
    } catch (error) {
      if (options.signal.aborted) break;
      reason = (error as Error).message || String(error);
    }
    if (options.signal.aborted) break;
    attempt += 1;
    options.onStatus({ state: "reconnecting", after, reason, attempt });
    // A clean end (the server's maxSeconds) reconnects at once; failures back off to 5 s; a
    // refusal waits as long as the server asked, plus up to a second so that the dashboards
    // it refused together do not come back together.
    const backoff = attempt === 1 ? 250 : Math.min(5000, 500 * 2 ** (attempt - 2));
    await sleep(wait > 0 ? wait + Math.random() * 1000 : backoff);
  }
  return after;
}
