// The one Model of the page and the hook that re-renders a component when it changes.

import { useEffect, useState } from "preact/hooks";
import { Model } from "./model";

export const model = new Model();

export function useModel(): number {
  const [v, setV] = useState(model.version);
  useEffect(() => model.subscribe(() => setV(model.version)), []);
  return v;
}
