import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { createBrowserRouter, RouterProvider } from "react-router";

function Placeholder() {
  return (
    <main>
      <h1>Talon</h1>
      <p>The dashboard is starting.</p>
    </main>
  );
}

const router = createBrowserRouter([{ path: "*", element: <Placeholder /> }], { basename: "/ui" });

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <RouterProvider router={router} />
  </StrictMode>,
);
