-- Q4. New users of direct oral anticoagulants (ATC B01AF) after a six-month washout,
-- their major bleeding hospitalisations within a year and deaths within a year.
WITH disp AS (
  SELECT p.BEN_NIR_PSA, p.BEN_RNG_GEM, p.EXE_SOI_DTD AS d
  FROM ER_PRS_F p
  JOIN ER_PHA_F f ON f.FLX_DIS_DTD = p.FLX_DIS_DTD AND f.FLX_TRT_DTD = p.FLX_TRT_DTD AND f.FLX_EMT_TYP = p.FLX_EMT_TYP
      AND f.FLX_EMT_NUM = p.FLX_EMT_NUM AND f.FLX_EMT_ORD = p.FLX_EMT_ORD AND f.ORG_CLE_NUM = p.ORG_CLE_NUM
      AND f.DCT_ORD_NUM = p.DCT_ORD_NUM AND f.PRS_ORD_NUM = p.PRS_ORD_NUM AND f.REM_TYP_AFF = p.REM_TYP_AFF
  JOIN IR_PHA_R r ON r.PHA_CIP_C13 = f.PHA_PRS_C13
  WHERE p.FLX_DIS_DTD BETWEEN DATE '{year}-01-01' AND DATE '{next}-06-01'
    AND p.EXE_SOI_DTD BETWEEN DATE '{year}-01-01' AND DATE '{year}-12-31'
    AND p.DPN_QLF <> 71 AND r.PHA_ATC_C07 LIKE 'B01AF%' AND f.PHA_ACT_QSN > 0),
idx AS (
  SELECT BEN_NIR_PSA, BEN_RNG_GEM, MIN(d) AS index_date FROM disp GROUP BY 1, 2
  HAVING MIN(d) >= DATE '{year}-07-01'),
outc AS (
  SELECT c.NIR_ANO_17, MIN(c.EXE_SOI_DTD) AS adm
  FROM T_MCO{yy}C c JOIN T_MCO{yy}B b ON b.ETA_NUM = c.ETA_NUM AND b.RSA_NUM = c.RSA_NUM
  WHERE (b.DGN_PAL LIKE 'I60%' OR b.DGN_PAL LIKE 'I61%' OR b.DGN_PAL LIKE 'K92%' OR b.DGN_PAL LIKE 'D62%')
    AND b.GRG_GHM NOT LIKE '90%' AND c.NIR_RET = '0' AND c.NAI_RET = '0' AND c.SEX_RET = '0'
  GROUP BY 1)
SELECT COUNT(*) AS cohort,
       COUNT(o.NIR_ANO_17) AS with_event,
       -- Death dates are known to the month in a project (SNDS rule: one potential
       -- identifier at full precision, here the care dates).
       SUM(CASE WHEN ben.BEN_DCD_DTE IS NOT NULL AND ben.BEN_DCD_DTE <> DATE '1600-01-01'
                 AND date_trunc('month', ben.BEN_DCD_DTE) <= date_trunc('month', i.index_date + INTERVAL '365 days')
                THEN 1 ELSE 0 END) AS died_1y
FROM idx i
JOIN IR_BEN_R ben ON ben.BEN_NIR_PSA = i.BEN_NIR_PSA AND ben.BEN_RNG_GEM = i.BEN_RNG_GEM
LEFT JOIN outc o ON o.NIR_ANO_17 = i.BEN_NIR_PSA
      AND o.adm > i.index_date AND o.adm <= i.index_date + INTERVAL '365 days'
