// The current gateway and who its token is, shared by every page.

import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";
import { ApiError, listAll, request, type Resource, type Whoami } from "./api";
import {
  currentGateway,
  loadGateways,
  normalizeUrl,
  removeGateway,
  saveGateway,
  switchGateway,
  type SavedGateway,
} from "./gateways";

interface Connection {
  gateways: SavedGateway[];
  gateway: SavedGateway | null;
  who: Whoami | null;
  namespaces: string[];
  loading: boolean;
  error: ApiError | null;
  /** Check the URL and token with whoami, then save them as the current gateway. */
  connect(entry: { name: string; url: string; token: string }): Promise<SavedGateway>;
  switchTo(id: string): void;
  remove(id: string): void;
  refresh(): void;
}

const ConnectionContext = createContext<Connection | null>(null);

export function useConnection(): Connection {
  const value = useContext(ConnectionContext);
  if (!value) throw new Error("useConnection outside ConnectionProvider");
  return value;
}

/** The current gateway; pages under RequireGateway always have one. */
export function useGateway(): SavedGateway {
  const { gateway } = useConnection();
  if (!gateway) throw new Error("no gateway");
  return gateway;
}

export function ConnectionProvider({ children }: { children: ReactNode }) {
  const [gateways, setGateways] = useState(() => loadGateways(localStorage));
  const [gateway, setGateway] = useState(() => currentGateway(localStorage));
  const [who, setWho] = useState<Whoami | null>(null);
  const [namespaces, setNamespaces] = useState<string[]>([]);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);
  const [generation, setGeneration] = useState(0);

  useEffect(() => {
    if (!gateway) {
      setWho(null);
      setNamespaces([]);
      return;
    }
    const abort = new AbortController();
    setLoading(true);
    setError(null);
    (async () => {
      try {
        const me = await request<Whoami>(gateway, "GET", "/v1/whoami", { signal: abort.signal });
        const listed = await listAll<Resource>(gateway, "/v1/namespaces", abort.signal);
        setWho(me);
        setNamespaces(listed.map((n) => n.metadata.name).sort());
      } catch (e) {
        if ((e as Error).name === "AbortError") return;
        setWho(null);
        setNamespaces([]);
        setError(e instanceof ApiError ? e : new ApiError(0, "error", String(e)));
      } finally {
        if (!abort.signal.aborted) setLoading(false);
      }
    })();
    return () => abort.abort();
  }, [gateway, generation]);

  const reload = useCallback(() => {
    setGateways(loadGateways(localStorage));
    setGateway(currentGateway(localStorage));
  }, []);

  const connect = useCallback(
    async (entry: { name: string; url: string; token: string }) => {
      const url = normalizeUrl(entry.url);
      if (!entry.token.trim()) throw new ApiError(0, "invalid", "enter a token");
      await request<Whoami>({ url, token: entry.token.trim() }, "GET", "/v1/whoami");
      const saved = saveGateway(localStorage, { ...entry, url });
      reload();
      return saved;
    },
    [reload],
  );

  const value = useMemo<Connection>(
    () => ({
      gateways,
      gateway,
      who,
      namespaces,
      loading,
      error,
      connect,
      switchTo: (id) => {
        switchGateway(localStorage, id);
        reload();
      },
      remove: (id) => {
        removeGateway(localStorage, id);
        reload();
      },
      refresh: () => setGeneration((g) => g + 1),
    }),
    [gateways, gateway, who, namespaces, loading, error, connect, reload],
  );
  return <ConnectionContext.Provider value={value}>{children}</ConnectionContext.Provider>;
}
