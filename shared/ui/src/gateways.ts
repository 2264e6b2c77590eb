// Saved gateways: name, URL and bearer token, kept in the browser's localStorage (never in a
// URL, so tokens do not end up in history, logs or Referer headers). Pure functions over a
// Storage so they can be tested without a browser.

export interface SavedGateway {
  id: string;
  name: string;
  url: string;
  token: string;
}

const LIST_KEY = "talon.gateways.v1";
const CURRENT_KEY = "talon.currentGateway.v1";

export function normalizeUrl(raw: string): string {
  const trimmed = raw.trim().replace(/\/+$/, "");
  let parsed: URL;
  try {
    parsed = new URL(trimmed);
  } catch {
    throw new Error(`not a URL: ${raw}`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new Error("the gateway URL must start with http:// or https://");
  }
  if (parsed.username || parsed.password) {
    throw new Error("put the token in the Token field, not in the URL");
  }
  return trimmed;
}

export function loadGateways(storage: Storage): SavedGateway[] {
  try {
    const parsed = JSON.parse(storage.getItem(LIST_KEY) ?? "[]");
    return Array.isArray(parsed)
      ? parsed.filter(
          (g): g is SavedGateway =>
            g && typeof g.id === "string" && typeof g.url === "string" && typeof g.token === "string",
        )
      : [];
  } catch {
    return [];
  }
}

export function currentGatewayId(storage: Storage): string | null {
  return storage.getItem(CURRENT_KEY);
}

export function currentGateway(storage: Storage): SavedGateway | null {
  const id = currentGatewayId(storage);
  return loadGateways(storage).find((g) => g.id === id) ?? null;
}

/** Add a gateway, or replace the one with the same name; it becomes the current one. */
export function saveGateway(
  storage: Storage,
  entry: { name: string; url: string; token: string },
  newId: () => string = randomId,
): SavedGateway {
  const url = normalizeUrl(entry.url);
  const name = entry.name.trim() || new URL(url).host;
  const list = loadGateways(storage);
  const existing = list.find((g) => g.name === name);
  const saved: SavedGateway = { id: existing?.id ?? newId(), name, url, token: entry.token.trim() };
  const next = existing ? list.map((g) => (g.id === saved.id ? saved : g)) : [...list, saved];
  storage.setItem(LIST_KEY, JSON.stringify(next));
  storage.setItem(CURRENT_KEY, saved.id);
  return saved;
}

export function switchGateway(storage: Storage, id: string): SavedGateway | null {
  const found = loadGateways(storage).find((g) => g.id === id) ?? null;
  if (found) storage.setItem(CURRENT_KEY, found.id);
  return found;
}

/** Forget a gateway and its token; the current one moves to the first left, if any. */
export function removeGateway(storage: Storage, id: string): SavedGateway | null {
  const next = loadGateways(storage).filter((g) => g.id !== id);
  storage.setItem(LIST_KEY, JSON.stringify(next));
  if (currentGatewayId(storage) === id || !next.some((g) => g.id === currentGatewayId(storage))) {
    if (next.length > 0) storage.setItem(CURRENT_KEY, next[0].id);
    else storage.removeItem(CURRENT_KEY);
  }
  return currentGateway(storage);
}

function randomId(): string {
  return `gw-${crypto.randomUUID()}`;
}
