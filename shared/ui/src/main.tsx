import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { createBrowserRouter, Navigate, RouterProvider, useParams } from "react-router";
import { ConnectionProvider } from "./connection";
import { ConnectPage } from "./pages/Connect";
import { Home, RequireGateway } from "./pages/Layout";
import { ResourceDetail, ResourceList } from "./pages/Resources";
import { SessionPage } from "./pages/Session";
import { GraphPage } from "./pages/Graph";
import { ApplyPage } from "./pages/Apply";
import { TokensPage } from "./pages/Tokens";
import "./styles.css";

function AgentSessions() {
  // /ui/ns/{ns}/agents/{agent}/sessions: the agent page lists them.
  const { ns = "", agent = "" } = useParams();
  return <Navigate to={`/ns/${encodeURIComponent(ns)}/agents/${encodeURIComponent(agent)}#sessions`} replace />;
}

function NamespaceHome() {
  const { ns = "" } = useParams();
  return <Navigate to={`/ns/${encodeURIComponent(ns)}/agents`} replace />;
}

// Paths mirror the API's: /ui/ns/{ns}/{kind}/{name} <-> /v1/ns/{ns}/{kind}/{name}.
const router = createBrowserRouter(
  [
    { path: "/connect", element: <ConnectPage /> },
    {
      path: "/",
      element: <RequireGateway />,
      children: [
        { index: true, element: <Home /> },
        { path: "tokens", element: <TokensPage /> },
        { path: "ns/:ns", element: <NamespaceHome /> },
        { path: "ns/:ns/graph", element: <GraphPage /> },
        { path: "ns/:ns/apply", element: <ApplyPage /> },
        { path: "ns/:ns/agents/:agent/sessions", element: <AgentSessions /> },
        { path: "ns/:ns/agents/:agent/sessions/:id", element: <SessionPage /> },
        { path: "ns/:ns/:kind", element: <ResourceList /> },
        { path: "ns/:ns/:kind/:name", element: <ResourceDetail /> },
        { path: "*", element: <p>No such page.</p> },
      ],
    },
  ],
  { basename: "/ui" },
);

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <ConnectionProvider>
      <RouterProvider router={router} />
    </ConnectionProvider>
  </StrictMode>,
);
