import { describe, expect, it } from "vitest";
import { follow, SseParser, type StreamStatus } from "./sse";

describe("SseParser", () => {
  it("parses events split anywhere, with CRLF, comments and multi-line data", () => {
    const parser = new SseParser();
    const text = "retry: 2000\r\n\r\n: keep-alive\n\nid: 7\nevent: step.started\ndata: {\"a\":\ndata: 1}\n\nevent: stream.end\ndata: {}\n\n";
    const out = [];
    for (const ch of text) out.push(...parser.push(ch));
    expect(out).toEqual([
      { id: "7", event: "step.started", data: '{"a":\n1}' },
      { id: null, event: "stream.end", data: "{}" },
    ]);
  });

  it("waits for the LF of a CRLF split across chunks", () => {
    const parser = new SseParser();
    expect(parser.push("data: x\r")).toEqual([]);
    expect(parser.push("\n\r\n")).toEqual([{ id: null, event: "message", data: "x" }]);
  });
});

function sse(events: { id: number; type: string }[], end?: string): string {
  const body = events
    .map((e) => `id: ${e.id}\nevent: ${e.type}\ndata: ${JSON.stringify({ ...e, turnId: null, data: {}, createdAt: "" })}\n\n`)
    .join("");
  return body + (end ? `event: stream.end\ndata: ${JSON.stringify({ type: "stream.end", reason: end, message: "m" })}\n\n` : "");
}

describe("follow", () => {
  it("resumes after a dropped connection from the last event id, and stops on stream.end", async () => {
    const asked: string[] = [];
    const bodies = [
      // first connection: two events, then the connection breaks mid-stream
      () => {
        let pulls = 0;
        const stream = new ReadableStream<Uint8Array>({
          pull(controller) {
            if (pulls++ === 0) {
              controller.enqueue(new TextEncoder().encode(sse([{ id: 4, type: "a" }, { id: 5, type: "b" }])));
            } else {
              controller.error(new TypeError("network error"));
            }
          },
        });
        return new Response(stream, { status: 200 });
      },
      () => new Response(sse([{ id: 6, type: "c" }], "token_revoked"), { status: 200 }),
    ];
    const fetchImpl = (async (_url: string, init: RequestInit) => {
      asked.push((init.headers as Record<string, string>)["Last-Event-ID"]);
      expect((init.headers as Record<string, string>).Authorization).toBe("Bearer t");
      return bodies.shift()!();
    }) as unknown as typeof fetch;
    const seen: number[] = [];
    const statuses: StreamStatus[] = [];
    const last = await follow({
      url: "http://gw/stream",
      token: "t",
      after: 3,
      onEvent: (e) => seen.push(e.id),
      onStatus: (s) => statuses.push(s),
      signal: new AbortController().signal,
      fetchImpl,
      sleep: async () => {},
    });
    expect(asked).toEqual(["3", "5"]);
    expect(seen).toEqual([4, 5, 6]);
    expect(last).toBe(6);
    expect(statuses.map((s) => s.state)).toEqual(["connecting", "live", "reconnecting", "live", "ended"]);
    expect(statuses[3]).toMatchObject({ resumed: true, after: 5 });
  });

  it("gives up on answers a retry cannot change", async () => {
    const fetchImpl = (async () =>
      new Response(JSON.stringify({ error: { message: "namespace not found" } }), { status: 404 })) as unknown as typeof fetch;
    const statuses: StreamStatus[] = [];
    await follow({
      url: "u", token: "t", after: 0, onEvent: () => {}, onStatus: (s) => statuses.push(s),
      signal: new AbortController().signal, fetchImpl, sleep: async () => {},
    });
    expect(statuses.at(-1)).toEqual({ state: "ended", reason: "http_404", message: "namespace not found" });
  });

  it("waits as long as a busy gateway asks (Retry-After) before trying again", async () => {
    const answers = [
      () => new Response(JSON.stringify({ error: { code: "busy", message: "this instance has 24 streams open" } }),
                         { status: 503, headers: { "Retry-After": "5" } }),
      () => new Response(JSON.stringify({ error: { code: "too_many_streams", message: "this token has 6" } }),
                         { status: 429, headers: { "Retry-After": "3" } }),
      () => new Response(sse([{ id: 1, type: "a" }], "token_revoked"), { status: 200 }),
    ];
    const fetchImpl = (async () => answers.shift()!()) as unknown as typeof fetch;
    const slept: number[] = [];
    const statuses: StreamStatus[] = [];
    const seen: number[] = [];
    await follow({
      url: "u", token: "t", after: 0, onEvent: (e) => seen.push(e.id), onStatus: (s) => statuses.push(s),
      signal: new AbortController().signal, fetchImpl, sleep: async (ms) => { slept.push(ms); },
    });
    expect(slept.length).toBe(2);
    expect(slept[0]).toBeGreaterThanOrEqual(5000);
    expect(slept[0]).toBeLessThan(6000);
    expect(slept[1]).toBeGreaterThanOrEqual(3000);
    expect(slept[1]).toBeLessThan(4000);
    expect(statuses[1]).toMatchObject({ state: "reconnecting", reason: "this instance has 24 streams open" });
    expect(seen).toEqual([1]);
  });
});
