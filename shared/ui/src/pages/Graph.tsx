export function GraphPage() {
  return <p>The object graph is not drawn yet.</p>;
}
