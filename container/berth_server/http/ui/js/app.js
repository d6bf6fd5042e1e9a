// The page's entry point: each section is one module with an init(); they talk through events.js.
import * as chat from "./chat.js";
import * as launch from "./launch.js";
import * as media from "./media.js";
import * as models from "./models.js";
import * as registrations from "./registrations.js";
import * as status from "./status.js";
import * as tryout from "./tryout.js";

// Listeners first (chat, launch, try-out), then the sections that fetch and announce.
for (const section of [chat, launch, tryout, media, registrations, models, status]) section.init();
