export function ApplyPage() {
  return <p>Apply is not built yet.</p>;
}
